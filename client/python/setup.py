"""Builds ray_zerocopy._zerocopy with the project's CMake (see pyproject.toml)."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parents[2]


class CMakeBuild(build_ext):
    def build_extension(self, ext):
        if not (ROOT / "CMakeLists.txt").exists():
            raise RuntimeError(f"building ray_zerocopy needs the whole zerocopy repository; {ROOT} is not it")
        build = Path(self.build_temp).resolve() / "cmake"
        subprocess.check_call(["cmake", "-S", str(ROOT), "-B", str(build), f"-DZEROCOPY_PYTHON={sys.executable}",
                               "-DBUILD_TESTING=OFF"])
        subprocess.check_call(["cmake", "--build", str(build), "--target", "zerocopy_python",
                               f"-j{os.cpu_count() or 2}"])
        built = next((build / "python/ray_zerocopy").glob("_zerocopy*.so"))
        target = Path(self.get_ext_fullpath(ext.name))
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(built, target)


setup(ext_modules=[Extension("ray_zerocopy._zerocopy", sources=[])], cmdclass={"build_ext": CMakeBuild})
