"""cc_static_archive: bundle ferry's own object files into one static archive.

    load("//tools:static_archive.bzl", "cc_static_archive")

    cc_static_archive(
        name = "ferry_static",
        deps = ["//allocator:ferry"],
        out = "libferry.a",          # optional, default "lib<name>.a"
    )

Collects the object files of every library in the transitive link closure of
`deps` that belongs to this workspace (external repositories such as @system
are skipped: link those separately) and archives them with the C++
toolchain's `ar`. PIC objects are used when a library has them, otherwise its
non-PIC objects. Each object enters the archive under a name derived from its
full output path, so sources with the same basename in different packages or
targets stay distinct members (`ar t`, `ar x` see both).

Written against Bazel 4.2.3 (Debian bazel-bootstrap): CcInfo.linking_context
.linker_inputs -> LinkerInput.owner / .libraries -> LibraryToLink.objects /
.pic_objects.
"""

load("@bazel_tools//tools/cpp:toolchain_utils.bzl", "find_cpp_toolchain")

def _objects_of(library):
    pic = getattr(library, "pic_objects", None) or []
    if pic:
        return pic
    return getattr(library, "objects", None) or []

def _archive_name(obj):
    # bazel-out/k8-fastbuild/bin/allocator/_objs/ferry/arena.pic.o has
    # short_path allocator/_objs/ferry/arena.pic.o -> allocator_ferry_arena.pic.o
    return obj.short_path.replace("/_objs/", "/").replace("/", "_")

def _cc_static_archive_impl(ctx):
    cc_toolchain = find_cpp_toolchain(ctx)
    out = ctx.outputs.out

    objects = []
    seen = {}
    for dep in ctx.attr.deps:
        for linker_input in dep[CcInfo].linking_context.linker_inputs.to_list():
            if linker_input.owner.workspace_name != "":
                continue  # @system and other external repositories
            for library in linker_input.libraries:
                for obj in _objects_of(library):
                    if obj.path not in seen:
                        seen[obj.path] = True
                        objects.append(obj)

    names = {}
    for obj in objects:
        name = _archive_name(obj)
        if name in names:
            fail("cc_static_archive: two objects map to archive member %s: %s and %s" %
                 (name, names[name], obj.path))
        names[name] = obj.path

    args = ctx.actions.args()
    args.add(cc_toolchain.ar_executable)
    args.add(out)
    for obj in objects:
        args.add(obj)
        args.add(_archive_name(obj))

    ctx.actions.run_shell(
        inputs = depset(objects, transitive = [cc_toolchain.all_files]),
        outputs = [out],
        arguments = [args],
        command = """
set -eu
AR="$1"; OUT="$2"; shift 2
STAGE="$OUT.objs"
rm -rf "$STAGE" "$OUT"
mkdir -p "$STAGE"
: > "$STAGE.list"
while [ $# -gt 0 ]; do
  cp "$1" "$STAGE/$2"
  printf '%s\\n' "$STAGE/$2" >> "$STAGE.list"
  shift 2
done
"$AR" qcD "$OUT" @"$STAGE.list"
"$AR" sD "$OUT"
rm -rf "$STAGE" "$STAGE.list"
""",
        mnemonic = "CcStaticArchive",
        progress_message = "Archiving %s" % out.short_path,
    )

    return [DefaultInfo(files = depset([out]))]

_cc_static_archive = rule(
    implementation = _cc_static_archive_impl,
    attrs = {
        "deps": attr.label_list(
            providers = [CcInfo],
            doc = "cc_library targets whose (transitive, in-workspace) objects go in the archive.",
        ),
        "out": attr.output(
            mandatory = True,
            doc = "Name of the archive, e.g. libferry.a.",
        ),
        "_cc_toolchain": attr.label(
            default = Label("@bazel_tools//tools/cpp:current_cc_toolchain"),
        ),
    },
    toolchains = ["@bazel_tools//tools/cpp:toolchain_type"],
    incompatible_use_toolchain_transition = True,
    fragments = ["cpp"],
)

def cc_static_archive(name, deps, out = None, **kwargs):
    """Bundles the in-workspace objects of `deps` into one static archive.

    Args:
      name: target name.
      deps: cc_library targets.
      out: archive file name; defaults to "lib<name>.a".
      **kwargs: common attributes (visibility, tags, testonly, ...).
    """
    _cc_static_archive(
        name = name,
        deps = deps,
        out = out or "lib%s.a" % name,
        **kwargs
    )
