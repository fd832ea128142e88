# The two commands: `make demo` and `make test`. Both install what is
# missing (deploy/install-deps.sh), build into build/, and run.
VENV ?= $(or $(ZEROCOPY_VENV),$(HOME)/.cache/zerocopy/venv)
PYTHON := $(VENV)/bin/python
BUILD ?= build
JOBS ?= 2

.PHONY: all deps build demo test clean

all: build

# Idempotent: apt-get of the Debian packages, then the pinned venv.
deps:
	ZEROCOPY_VENV=$(VENV) deploy/install-deps.sh

$(BUILD)/Makefile: CMakeLists.txt
	cmake -S . -B $(BUILD) -DZEROCOPY_PYTHON=$(PYTHON)

build: deps $(BUILD)/Makefile
	cmake --build $(BUILD) -j$(JOBS)

demo: build
	$(PYTHON) bench/demo.py --build $(BUILD)

test: build
	cd $(BUILD) && ctest --output-on-failure --timeout 900

clean:
	rm -rf $(BUILD)
