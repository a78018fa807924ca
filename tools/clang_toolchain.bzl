"""@local_config_clang: Bazel's auto-configured C++ toolchain, made with clang.

The fuzz config (//:.bazelrc, --config=fuzz) builds with it through
--crosstool_top, so that clang gets a toolchain repository of its own: the
g++ toolchain (@local_config_cc) is never reconfigured, and switching
between the configs keeps both builds' caches. Bazel 4.2.3's
cc_autoconf_impl does the configuring (flags, include directories, and the
"clang" compiler name); only the compiler differs. Fetched only when a
build asks for it, so a g++ build never needs clang.
"""

load("@bazel_tools//tools/cpp:cc_configure.bzl", "cc_autoconf_impl")

def _clang_autoconf_impl(repository_ctx):
    clang = repository_ctx.which("clang")
    if clang == None:
        fail("clang not found: tools/bazel installs it (Debian package clang)")
    cc_autoconf_impl(repository_ctx, overriden_tools = {"gcc": str(clang)})

clang_autoconf = repository_rule(
    implementation = _clang_autoconf_impl,
    environ = ["PATH"],
    configure = True,
)
