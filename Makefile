# The two commands: `make demo` and `make test`. Both install what is
# missing (deploy/install-deps.sh), build into build/, and run.
VENV ?= $(or $(ZEROCOPY_VENV),$(HOME)/.cache/zerocopy/venv)
PYTHON := $(VENV)/bin/python
BUILD ?= build
JOBS ?= 2

.PHONY: all deps build demo test test-asan test-tsan fuzz fuzz-build bench bench-quick loadtest deb lint format clean

all: build

# Idempotent: apt-get of the Debian packages, then the pinned venv.
deps:
	ZEROCOPY_VENV=$(VENV) deploy/install-deps.sh

$(BUILD)/Makefile: CMakeLists.txt
	cmake -S . -B $(BUILD) -DZEROCOPY_PYTHON=$(PYTHON)

build: deps $(BUILD)/Makefile
	cmake --build $(BUILD) -j$(JOBS)

# The Debian packages (cmake/Packaging.cmake): $(BUILD)/zerocopy_<version>_amd64.deb
# (the daemon, the CLI, the units, the config) and zerocopy-dev_... (the C++
# client). `apt-get install ./$(BUILD)/zerocopy_*.deb` installs one.
deb: build
	cd $(BUILD) && cpack -G DEB

demo: build
	$(PYTHON) bench/demo.py --build $(BUILD)

# Benchmarks against the alternatives (bench/bench.py): the full run writes
# bench/results (README "Performance"), the quick one build/bench-quick.
bench: build
	$(PYTHON) bench/bench.py --build $(BUILD)

bench-quick: build
	$(PYTHON) bench/bench.py --quick --build $(BUILD)

# The load test at full length (make test runs it for 10 s): 64 clients,
# mixed calls, then checks that nothing leaked. LOAD_SECONDS, LOAD_CLIENTS.
LOAD_SECONDS ?= 60
LOAD_CLIENTS ?= 64
loadtest: build
	ZEROCOPY_LOAD_SECONDS=$(LOAD_SECONDS) ZEROCOPY_LOAD_CLIENTS=$(LOAD_CLIENTS) $(BUILD)/tests/cpp/zerocopy_daemon_tests "[load]"

test: build fuzz-build
	cd $(BUILD) && ctest --output-on-failure --timeout 900
	tests/fuzz/run.sh $(FUZZ_BUILD) $(FUZZ_QUICK_SECONDS)

# libFuzzer targets (clang, ASan+UBSan) in their own build directory:
# `make test` runs each for FUZZ_QUICK_SECONDS, `make fuzz` for FUZZ_SECONDS.
FUZZ_BUILD ?= build-fuzz
FUZZ_SECONDS ?= 300
FUZZ_QUICK_SECONDS ?= 15

fuzz-build: deps
	CC=clang CXX=clang++ cmake -S . -B $(FUZZ_BUILD) -DZEROCOPY_FUZZ=ON -DZEROCOPY_WITH_TORCH=OFF \
	  -DBUILD_TESTING=OFF -DZEROCOPY_PYTHON=$(PYTHON)
	cmake --build $(FUZZ_BUILD) -j$(JOBS) --target zerocopy_fuzzers

fuzz: fuzz-build
	tests/fuzz/run.sh $(FUZZ_BUILD) $(FUZZ_SECONDS)

# The C++ suite under AddressSanitizer + UndefinedBehaviorSanitizer, in
# its own build directory, then the Python suite over the instrumented
# extension.
test-asan: deps
	cmake -S . -B build-asan -DZEROCOPY_SANITIZE=address,undefined -DCMAKE_BUILD_TYPE=Debug \
	  -DZEROCOPY_WITH_TORCH=OFF -DZEROCOPY_PYTHON=$(PYTHON)
	cmake --build build-asan -j$(JOBS)
	cd build-asan && UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 ctest --output-on-failure --timeout 900 -E '^python_'
	# The Python suite over the instrumented extension: libasan preloaded
	# into the venv's interpreter (with libstdc++, whose exceptions ASan must
	# intercept) and into the Ray workers (tests/python/conftest.py), each
	# process's reports in build-asan/asan-reports, any of them failing the
	# run. Not the CLI's TorchScript preloads (this build has no LibTorch).
	rm -rf build-asan/asan-reports && mkdir -p build-asan/asan-reports
	cd tests/python && LD_PRELOAD="$$(gcc -print-file-name=libasan.so):$$(gcc -print-file-name=libstdc++.so)" \
	  ASAN_OPTIONS=detect_leaks=0:log_path=$(CURDIR)/build-asan/asan-reports/asan \
	  UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1:log_path=$(CURDIR)/build-asan/asan-reports/ubsan \
	  ZEROCOPY_BUILD=$(CURDIR)/build-asan RAY_USAGE_STATS_ENABLED=0 $(PYTHON) -m pytest -q -p no:cacheprovider \
	  test_model_wrapper.py test_gpu_fake.py test_formats.py test_ray.py test_empty_tensors.py -k "not torchscript_archive_loads_in_python"
	@if [ -n "$$(ls build-asan/asan-reports)" ]; then \
	  echo "test-asan: sanitizer reports:"; head -50 build-asan/asan-reports/*; exit 1; \
	else echo "test-asan: no sanitizer report from any Python process"; fi

# The C++ suite under ThreadSanitizer, in its own build directory, over
# Debian's Abseil and gRPC rebuilt with TSan (tests/tsan/run.sh says how).
test-tsan: deps
	cmake -S . -B build-tsan -DZEROCOPY_SANITIZE=thread -DCMAKE_BUILD_TYPE=RelWithDebInfo \
	  -DZEROCOPY_WITH_TORCH=OFF -DZEROCOPY_PYTHON=$(PYTHON)
	cmake --build build-tsan -j$(JOBS)
	tests/tsan/run.sh build-tsan

# Formatting and lint: the C++ against .clang-format (clang-format from
# Debian), the Python against ruff.toml (ruff, pinned in requirements.txt).
# `make format` applies both fixes that lint asks for.
CXX_SOURCES = $(shell git ls-files '*.cc' '*.h' '*.cu')
lint: deps
	@clang-format --style=file --dry-run -Werror $(CXX_SOURCES) || \
	  { echo "make lint: C++ formatting differs from .clang-format; fix with: make format"; exit 1; }
	@$(VENV)/bin/ruff check . || { echo "make lint: ruff found problems; fix them (make format fixes some)"; exit 1; }
	@echo "make lint: C++ and Python clean"

format: deps
	clang-format --style=file -i $(CXX_SOURCES)
	$(VENV)/bin/ruff check --fix .

clean:
	rm -rf $(BUILD) build-asan build-tsan $(FUZZ_BUILD)
