"""Builds the Swift library with SwiftPM and ships it inside the fp4swift package.

`pip install -e .` (or a wheel build) runs
    swift build -c release --product fp4swift -Xswiftc -static-stdlib
(plus `-target-cpu haswell` when the CPU has AVX2/FMA, so the loops vectorize) and copies
libfp4swift.so next to python/fp4swift/__init__.py. The static Swift standard library
means the .so needs only libc, libstdc++, libm and libopenblas at run time.
The dummy Extension makes the wheel platform-tagged.
"""
import os
import shutil
import subprocess
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = os.path.dirname(os.path.abspath(__file__))
# A build folder of its own: the static-stdlib flags must not mix with `swift test`'s .build.
SCRATCH = os.path.join(ROOT, ".build-python")


def _fail(message: str) -> None:
    sys.stderr.write(f"\nfp4swift build error: {message}\n\n")
    raise SystemExit(1)


def _target_cpu_flags() -> list:
    """Lets LLVM vectorize the kernels with AVX2/FMA when this CPU has them.

    FP4SWIFT_TARGET_CPU overrides the choice (an LLVM CPU name such as `haswell`, or
    `generic` for a library that runs on any x86-64).
    """
    cpu = os.environ.get("FP4SWIFT_TARGET_CPU")
    if cpu is None:
        cpu = "generic"
        try:
            with open("/proc/cpuinfo") as f:
                flags = next((line for line in f if line.startswith("flags")), "").split()
            if {"avx2", "fma", "bmi2", "f16c"} <= set(flags):
                cpu = "haswell"
        except OSError:
            pass
    if cpu in ("", "generic"):
        return []
    return ["-Xswiftc", "-target-cpu", "-Xswiftc", cpu, "-Xcc", f"-march={cpu}"]


def _have_openblas() -> bool:
    if shutil.which("pkg-config"):
        if subprocess.run(["pkg-config", "--exists", "openblas"]).returncode == 0:
            return True
    return any(
        os.path.exists(p)
        for p in ("/usr/include/x86_64-linux-gnu/cblas.h", "/usr/include/aarch64-linux-gnu/cblas.h",
                  "/usr/include/cblas.h", "/usr/include/openblas/cblas.h")
    )


class BuildSwift(build_ext):
    def build_extension(self, ext: Extension) -> None:
        swift = shutil.which("swift")
        if swift is None:
            _fail("the Swift toolchain is missing: install Swift 6 (swift.org) and put `swift` on PATH.")
        if not _have_openblas():
            _fail("OpenBLAS is missing: install it with `apt-get install libopenblas-dev`.")
        cmd = [swift, "build", "-c", "release", "--product", "fp4swift",
               "-Xswiftc", "-static-stdlib", "--scratch-path", SCRATCH] + _target_cpu_flags()
        print("running:", " ".join(cmd), flush=True)
        if subprocess.run(cmd, cwd=ROOT).returncode != 0:
            _fail("`swift build` failed (see the compiler output above).")
        built = os.path.join(SCRATCH, "release", "libfp4swift.so")
        dest = self.get_ext_fullpath(ext.name)
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        # Copy then rename: a process that has the old library mapped keeps its inode
        # instead of crashing when the file is overwritten in place.
        tmp = dest + ".tmp"
        shutil.copyfile(built, tmp)
        os.replace(tmp, dest)

    def get_ext_filename(self, fullname: str) -> str:
        # A plain shared library loaded through ctypes, not a CPython extension module.
        *package, name = fullname.split(".")
        return os.path.join(*package, name + ".so")


setup(
    ext_modules=[Extension("fp4swift.libfp4swift", sources=[])],
    cmdclass={"build_ext": BuildSwift},
)
