#!/usr/bin/env python3
"""Mutation testing of invrender's kernels: plants realistic one-line mistakes, one at a time, in a
scratch copy of the repository and checks that the op's tests catch each one.

    python tools/mutate.py --list                 # the mutations
    python tools/mutate.py                        # run them all (a while: one rebuild each)
    python tools/mutate.py --only raster-cover-blur,voxel-nearest-edge
    python tools/mutate.py --family raymarch --no-fail

The scratch copy (--workdir, default .mutate/ in the repository, git-ignored) is synced from the
working tree (csrc/, invrender/, tests/, setup.py, ...; only files whose content changed are copied,
so ninja recompiles only what changed), built once with `python setup.py build_ext --inplace` and
rebuilt incrementally for each mutation (only the translation units that include the touched file).
The mutated file is restored after every mutation, also on error or Ctrl-C, and the copy is rebuilt
clean at the end. Tests run as `python -m pytest -x -q <files>` with PYTHONPATH=<workdir>; a test
run that exceeds --timeout counts as caught (a mutation may make a kernel loop forever).

Result per mutation: CAUGHT (a test failed, or timed out), SURVIVED (all the tests passed),
STALE (the original snippet does not occur exactly once in its file: the code moved on, update the
entry), BUILD-FAILED (the mutant does not compile: not a useful mutation). The exit status is 1 when
any mutation SURVIVED or is STALE (BUILD-FAILED too), unless --no-fail.

Adding a mutation: append a dict to MUTATIONS with a unique id, the family, the file, the exact
original text (it must occur exactly once in the file; take enough context, several lines if
needed), its replacement (one realistic mistake that changes behaviour, not an equivalent
rewrite), what it breaks, and the test files that should catch it. Run it alone with --only ID.
"""

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Paths (relative to the repository) copied into the scratch copy.
SYNC_PATHS = ["csrc", "invrender", "tests", "models", "setup.py", "pyproject.toml"]

# Every family also runs the boundary tests (exact ties, zero, C in {1, 4, 5, 9}, documented defaults).
BOUNDARIES = "tests/test_boundaries.py"
VOXEL = ["tests/test_voxel.py", BOUNDARIES]
RAYMARCH = ["tests/test_raymarch.py", BOUNDARIES]
RASTER = ["tests/test_raster.py", BOUNDARIES]
COMPOSITE = ["tests/test_composite.py", BOUNDARIES]
CHAMFER = ["tests/test_chamfer.py", BOUNDARIES]

# Each entry: id, family, file (relative to the repository), orig (exact text, once in the file),
# new (its replacement), breaks (one line), tests (test files run against the mutant).
# known=True: one of the six classes the outside review of issue 13 found surviving.
MUTATIONS = [
    # ---- voxel (rotate_voxels, project_voxels, rotation_matrix) ----
    dict(id="voxel-nearest-edge", family="voxel", file="csrc/voxel/voxel_math.h", known=True,
         orig="const bool inside = u.x >= T(-0.5) && u.x < T(g.W) - T(0.5)",
         new="const bool inside = u.x > T(-0.5) && u.x < T(g.W) - T(0.5)",
         breaks="nearest sampling drops a point exactly on the lower x edge of the grid (tie at -0.5)",
         tests=VOXEL),
    dict(id="voxel-upper-corner", family="voxel", file="csrc/voxel/voxel_math.h",
         orig="s.vw[1] = s.w0 + 1 < g.W;",
         new="s.vw[1] = s.w0 + 1 <= g.W;",
         breaks="trilinear: the corner one past the last x index counts as inside (reads the clamped "
                "edge voxel instead of zero padding)",
         tests=VOXEL + RAYMARCH),
    dict(id="voxel-posgrad-sign", family="voxel", file="csrc/voxel/voxel_math.h",
         orig="gu.z = grad * (c1 - c0);",
         new="gu.z = grad * (c0 - c1);",
         breaks="sign of d(value)/du_d in the rotate/project backward: rotation gradient wrong",
         tests=VOXEL),
    dict(id="voxel-roll-grad-sign", family="voxel", file="csrc/voxel/voxel_math.h",
         orig="sr_ += g0 * (-sr * x0[k] - cr * y0[k]) + g1 * (cr * x0[k] - sr * y0[k]);",
         new="sr_ += g0 * (-sr * x0[k] - cr * y0[k]) + g1 * (cr * x0[k] + sr * y0[k]);",
         breaks="rotation_matrix backward: sign of one term of dR/droll",
         tests=VOXEL),
    dict(id="voxel-rotgrad-transposed", family="voxel", file="csrc/voxel/voxel_math.h",
         orig="gR[3 * j + i] += Acc(gp[i] * p[j]);",
         new="gR[3 * i + j] += Acc(gp[i] * p[j]);",
         breaks="dL/dR accumulated transposed (rotate_voxels and raymarch rotation gradients)",
         tests=VOXEL + RAYMARCH),
    dict(id="voxel-last-sample", family="voxel", file="csrc/voxel/voxel_math.h",
         orig="for (int64_t t = ilast + 1; t <= last; ++t) general(t);",
         new="for (int64_t t = ilast + 1; t < last; ++t) general(t);",
         breaks="off by one: the last boundary sample of a row / ray is skipped",
         tests=VOXEL),
    dict(id="voxel-project-chunk-offset", family="voxel", file="csrc/voxel/voxel_math.h",
         orig="const T* src = vox + (b * g.C + c0) * in_vol;",
         new="const T* src = vox + (b * g.C) * in_vol;",
         breaks="project_voxels forward: channels 4.. read channels 0.. (chunk offset dropped)",
         tests=VOXEL),
    dict(id="voxel-project-grad-factor", family="voxel", file="csrc/voxel/voxel_math.h",
         orig="gs[c] = gimg[i] * tau * (T(1) - img[i]);",
         new="gs[c] = gimg[i] * tau;",
         breaks="project_voxels backward: the (1 - img) factor of d img / d sum dropped",
         tests=VOXEL),
    # ---- raymarch ----
    dict(id="raymarch-density-zero-grad", family="raymarch", file="csrc/raymarch/raymarch_math.h",
         known=True,
         orig="if (!(raw >= T(0))) {",
         new="if (!(raw > T(0))) {",
         breaks="density mode: gradient at exactly zero density vanishes (should be delta)",
         tests=RAYMARCH),
    dict(id="raymarch-clamp-top-grad", family="raymarch", file="csrc/raymarch/raymarch_math.h",
         orig="if (raw > T(1)) {",
         new="if (raw >= T(1)) {",
         breaks="absorption mode: gradient 0 at exactly raw = 1 (torch.clamp passes it)",
         tests=RAYMARCH),
    dict(id="raymarch-dlda-sign", family="raymarch", file="csrc/raymarch/raymarch_math.h",
         orig="const T dLda = Ti * (eps - rr) + ga * Ti * lam;",
         new="const T dLda = Ti * (eps + rr) + ga * Ti * lam;",
         breaks="backward: sign of the occlusion term r_i in dL/da_i",
         tests=RAYMARCH),
    dict(id="raymarch-suffix-dropped", family="raymarch", file="csrc/raymarch/raymarch_math.h",
         orig="rr = a * eps + (T(1) - a) * rr;",
         new="rr = a * eps + rr;",
         breaks="backward: (1 - a) factor of the back-to-front recurrence dropped",
         tests=RAYMARCH),
    dict(id="raymarch-chunk-offset", family="raymarch", file="csrc/raymarch/raymarch_math.h",
         orig="for (int c = 0; c < nc; ++c) color[(b * g.C + c0 + c) * plane + pix] = acc[c];",
         new="for (int c = 0; c < nc; ++c) color[(b * g.C + c) * plane + pix] = acc[c];",
         breaks="forward with > 4 emission channels: the second chunk overwrites channels 0..3",
         tests=RAYMARCH),
    dict(id="raymarch-persp-depth", family="raymarch", file="csrc/raymarch/raymarch_math.h",
         orig="r.z0 = t0 * f / len;",
         new="r.z0 = t0;",
         breaks="perspective depth of the first sample: distance along the ray instead of view depth",
         tests=RAYMARCH),
    # ---- raster (rasterize) ----
    dict(id="raster-cover-blur", family="raster", file="csrc/raster/raster_math.h", known=True,
         orig="if (!(h.dist <= T(p.blur))) return;",
         new="if (!(h.dist < T(p.blur))) return;",
         breaks="coverage: a pixel at exactly the blur radius is no longer covered",
         tests=RASTER),
    dict(id="raster-depth-tie", family="raster", file="csrc/raster/raster_math.h", known=True,
         orig="while (pos > 0 && (fd[pos - 1] > h.depth ||",
         new="while (pos > 0 && (fd[pos - 1] >= h.depth ||",
         breaks="equal depths: the later face is inserted in front (ties no longer to the smaller index)",
         tests=RASTER),
    dict(id="raster-depth-tie-full", family="raster", file="csrc/raster/raster_math.h",
         orig="if (n == L && (h.depth > fd[L - 1] || (h.depth == fd[L - 1] && f > fi[L - 1]))) return;",
         new="if (n == L && (h.depth >= fd[L - 1] || (h.depth == fd[L - 1] && f > fi[L - 1]))) return;",
         breaks="layers full: a face at the depth of the last kept one is dropped even with a smaller "
                "index (only when faces arrive out of index order, as on the GPU)",
         tests=RASTER),
    dict(id="raster-default-sigma", family="raster", file="invrender/ops/raster.py", known=True,
         orig="    sigma: float = 1e-4,",
         new="    sigma: float = 1e-5,",
         breaks="rasterize's default sigma (UNICORN's 1e-4) changed, so the default blur radius is wrong",
         tests=RASTER),
    dict(id="raster-cull-sign", family="raster", file="csrc/raster/raster_math.h",
         orig="if (p.cull && r.area2 < T(0)) return;",
         new="if (p.cull && r.area2 > T(0)) return;",
         breaks="backface culling drops the front faces",
         tests=RASTER),
    dict(id="raster-segment-clamp", family="raster", file="csrc/raster/raster_math.h",
         orig="u = u < T(0) ? T(0) : (u > T(1) ? T(1) : u);",
         new="u = u < T(0) ? T(0) : u;",
         breaks="distance to an edge: the segment is not clamped at its end (infinite ray)",
         tests=RASTER),
    dict(id="raster-bary-grad-sign", family="raster", file="csrc/raster/raster_math.h",
         orig="g[3 * a + 1] += ge * (px - r.x[b]);",
         new="g[3 * a + 1] += ge * (r.x[b] - px);",
         breaks="backward: sign of d e_k / d y_a",
         tests=RASTER),
    dict(id="raster-depth-bary-grad", family="raster", file="csrc/raster/raster_math.h",
         orig="gb[k] = gbary[k] + gdepth * r.z[k];",
         new="gb[k] = gbary[k];",
         breaks="backward: depth's dependence on the barycentrics dropped (x, y gradients of depth)",
         tests=RASTER),
    dict(id="raster-clamp-grad-edge", family="raster", file="csrc/raster/raster_math.h",
         orig="gw[k] = h.w[k] >= T(0) ? (gb[k] - dot) / h.s : T(0);",
         new="gw[k] = h.w[k] > T(0) ? (gb[k] - dot) / h.s : T(0);",
         breaks="backward: no barycentric gradient for a pixel exactly on an edge (w = 0)",
         tests=RASTER),
    # ---- interpolate ----
    dict(id="interp-swapped-corner", family="interpolate", file="csrc/raster/interpolate_math.h",
         orig="out[c] = b0 * a0[c] + b1 * a1[c] + b2 * a2[c];",
         new="out[c] = b0 * a0[c] + b1 * a2[c] + b2 * a1[c];",
         breaks="forward: the weights of corners 1 and 2 swapped",
         tests=RASTER),
    dict(id="interp-attr-grad-weight", family="interpolate", file="csrc/raster/interpolate_math.h",
         orig="scatter(ga + c, bk * grad[c]);",
         new="scatter(ga + c, grad[c]);",
         breaks="backward: attribute gradient not weighted by the barycentric",
         tests=RASTER),
    dict(id="interp-last-fragment", family="interpolate", file="csrc/raster/interpolate_cpu.cpp",
         orig="for (int64_t n = b * s.P; n < (b + 1) * s.P; ++n)",
         new="for (int64_t n = b * s.P; n < (b + 1) * s.P - 1; ++n)",
         breaks="backward off by one: the last fragment of each mesh gets no gradient",
         tests=RASTER),
    # ---- composite_layers ----
    dict(id="composite-chunk-offset", family="composite", file="csrc/raster/composite_math.h",
         known=True,
         orig="acc[c] += w * col[l * s.C + c0 + c];\n      }\n      trans *= T(1) - al;",
         new="acc[c] += w * col[l * s.C + c];\n      }\n      trans *= T(1) - al;",
         breaks="forward with > 4 channels: channels 4.. composite the colours of channels 0..",
         tests=COMPOSITE),
    dict(id="composite-dalpha-sign", family="composite", file="csrc/raster/composite_math.h",
         orig="ga[l] = Tl * (eps - r) + gm * Tl * lam;",
         new="ga[l] = Tl * (r - eps) + gm * Tl * lam;",
         breaks="backward: sign of the colour term of dL/dalpha",
         tests=COMPOSITE),
    dict(id="composite-bg-grad", family="composite", file="csrc/raster/composite_math.h",
         orig="grad_background[o] = g[c * s.P] * trans;",
         new="grad_background[o] = g[c * s.P];",
         breaks="backward: background gradient not weighted by the final transmittance",
         tests=COMPOSITE),
    # ---- softras_blend ----
    dict(id="softras-chunk-offset", family="softras", file="csrc/raster/composite_math.h",
         orig="wsum += w;\n      INVRENDER_UNROLL\n      for (int c = 0; c < kChunk; ++c) {\n"
              "        if (c >= nc) break;\n        acc[c] += w * col[l * s.C + c0 + c];",
         new="wsum += w;\n      INVRENDER_UNROLL\n      for (int c = 0; c < kChunk; ++c) {\n"
             "        if (c >= nc) break;\n        acc[c] += w * col[l * s.C + c];",
         breaks="forward with > 4 channels: channels 4.. blend the colours of channels 0..",
         tests=COMPOSITE),
    dict(id="softras-G-sign", family="softras", file="csrc/raster/composite_math.h",
         orig="const T G = (eps - gI) * inv_w;",
         new="const T G = (gI - eps) * inv_w;",
         breaks="backward: sign of the image term in dL/dprob and dL/ddepth",
         tests=COMPOSITE),
    dict(id="softras-depth-grad-sign", family="softras", file="csrc/raster/composite_math.h",
         orig="gd[l] = w == T(0) ? T(0) : -G * w * inv_gamma * inv_range;",
         new="gd[l] = w == T(0) ? T(0) : G * w * inv_gamma * inv_range;",
         breaks="backward: sign of dL/ddepth",
         tests=COMPOSITE),
    dict(id="softras-silhouette-prefix", family="softras", file="csrc/raster/composite_math.h",
         orig="gp[l] = G * e + gs * gp[l] * suffix;",
         new="gp[l] = G * e + gs * suffix;",
         breaks="backward: silhouette gradient drops the prefix product of (1 - prob)",
         tests=COMPOSITE),
    dict(id="softras-zmax-min", family="softras", file="csrc/raster/composite_math.h",
         orig="if (!any || d > dall) dall = d;",
         new="if (!any || d < dall) dall = d;",
         breaks="stabiliser zmax taken as the farthest layer: exponents clamped at 0, weights wrong",
         tests=COMPOSITE),
    # ---- chamfer (nearest_neighbors, chamfer_distance) ----
    dict(id="chamfer-tie-index", family="chamfer", file="csrc/chamfer/chamfer_math.h",
         orig="(d == *best && j < *best_j)",
         new="(d == *best && j > *best_j)",
         breaks="equal distances go to the largest index instead of the smallest",
         tests=CHAMFER),
    dict(id="chamfer-dim-bound", family="chamfer", file="csrc/chamfer/chamfer_math.h",
         orig="for (int64_t k = 0; k < D; ++k) {\n    const T d = a[k] - b[k];",
         new="for (int64_t k = 0; k < D - 1; ++k) {\n    const T d = a[k] - b[k];",
         breaks="squared distance ignores the last coordinate",
         tests=CHAMFER),
    dict(id="chamfer-ygrad-sign", family="chamfer", file="csrc/chamfer/chamfer_math.h",
         orig="if (gy != nullptr) scatter(gy + k, -v);",
         new="if (gy != nullptr) scatter(gy + k, v);",
         breaks="backward: sign of the gradient of the nearest y point",
         tests=CHAMFER),
    dict(id="chamfer-kdtree-tie-prune", family="chamfer", file="csrc/chamfer/chamfer_cpu.cpp",
         orig="return best_j >= 0 && (bound > best || (bound == best && min_idx >= best_j));",
         new="return best_j >= 0 && bound >= best;",
         breaks="k-d tree: a node exactly as far as the best point is skipped even when it holds a "
                "smaller index, so a tie across nodes may keep the larger index",
         tests=CHAMFER),
    dict(id="chamfer-kdtree-tie-order", family="chamfer", file="csrc/chamfer/chamfer_cpu.cpp",
         orig="bl < br || (bl == br && tree.nodes[n.left].min_idx < tree.nodes[n.right].min_idx);",
         new="bl < br || (bl == br && tree.nodes[n.left].min_idx > tree.nodes[n.right].min_idx);",
         breaks="k-d tree: on equal box distances the child with the larger indices is searched "
                "first; answers stay right but duplicates cost many leaves per query (issue 13.2)",
         tests=CHAMFER),
]

STATUS_FAIL = ("SURVIVED", "STALE", "BUILD-FAILED")


def _env(workdir):
    env = dict(os.environ)
    env["PYTHONPATH"] = workdir + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["OMP_NUM_THREADS"] = env.get("MUTATE_THREADS", "1")
    env.setdefault("MAX_JOBS", "1")
    env["INVRENDER_FORCE_CPU"] = "1"  # only the CPU kernels are tested here
    env.pop("PYTEST_ADDOPTS", None)
    return env


def _run(cmd, cwd, env, timeout=None):
    """Runs cmd in its own process group; returns (returncode or None on timeout, output)."""
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
        return proc.returncode, out
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        return None, out
    except BaseException:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise


def _tracked_files():
    """Files of the working tree under SYNC_PATHS that git tracks or would track (not ignored)."""
    out = subprocess.check_output(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard", "--"] + SYNC_PATHS,
        cwd=REPO)
    return sorted({p for p in out.decode().split("\0") if p and os.path.isfile(os.path.join(REPO, p))})


def sync(workdir):
    """Copies changed files into workdir (content compared, so mtimes of unchanged files stay and
    ninja rebuilds only what changed) and removes synced files that are gone from the repository.
    Returns the number of files copied or removed."""
    files = _tracked_files()
    changed = 0
    for rel in files:
        src, dst = os.path.join(REPO, rel), os.path.join(workdir, rel)
        with open(src, "rb") as f:
            data = f.read()
        if os.path.isfile(dst):
            with open(dst, "rb") as f:
                if f.read() == data:
                    continue
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        with open(dst, "wb") as f:
            f.write(data)
        shutil.copymode(src, dst)
        changed += 1
    keep = set(files)
    for top in SYNC_PATHS:
        root = os.path.join(workdir, top)
        if not os.path.isdir(root):
            continue
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = [d for d in dirnames if d != "__pycache__"]
            for name in filenames:
                if name.endswith((".so", ".pyc")):
                    continue
                rel = os.path.relpath(os.path.join(dirpath, name), workdir)
                if rel not in keep:
                    os.remove(os.path.join(dirpath, name))
                    changed += 1
    return changed


def build(workdir, log):
    t0 = time.time()
    rc, out = _run([sys.executable, "setup.py", "build_ext", "--inplace"], workdir, _env(workdir))
    with open(log, "w") as f:
        f.write(out)
    return rc == 0, time.time() - t0


def run_tests(workdir, tests, timeout):
    """Returns (status, seconds, detail): CAUGHT / SURVIVED, detail = first failing test."""
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-rfE", "-p", "no:cacheprovider"] + tests
    t0 = time.time()
    rc, out = _run(cmd, workdir, _env(workdir), timeout)
    dt = time.time() - t0
    if rc is None:
        return "CAUGHT", dt, "timeout after %ds" % timeout, out
    if rc == 0:
        return "SURVIVED", dt, "", out
    m = re.search(r"^(?:FAILED|ERROR) (\S+)", out, re.M)
    if rc == 5:
        return "CAUGHT", dt, "no tests collected (rc 5)", out
    return "CAUGHT", dt, m.group(1) if m else "pytest rc %d" % rc, out


def check_snippet(workdir, m):
    path = os.path.join(workdir, m["file"])
    if not os.path.isfile(path):
        return None, "file missing"
    with open(path, newline="") as f:
        text = f.read()
    n = text.count(m["orig"])
    if n != 1:
        return None, "original snippet found %d times" % n
    return text, ""


def print_table(rows):
    print()
    print("%-28s %-11s %-12s %7s  %s" % ("id", "family", "result", "seconds", "detail"))
    print("-" * 100)
    for r in rows:
        print("%-28s %-11s %-12s %7.0f  %s" % (r["id"], r["family"], r["status"], r["seconds"],
                                                r["detail"]))
    caught = sum(r["status"] == "CAUGHT" for r in rows)
    print("-" * 100)
    counts = {}
    for r in rows:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    print("caught %d of %d (%s)" % (caught, len(rows),
                                    ", ".join("%s %d" % kv for kv in sorted(counts.items()))))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--list", action="store_true", help="print the mutations and exit")
    ap.add_argument("--only", default="", help="comma-separated mutation ids")
    ap.add_argument("--family", default="", help="comma-separated families (voxel, raymarch, raster, "
                    "interpolate, composite, softras, chamfer)")
    ap.add_argument("--workdir", default=os.path.join(REPO, ".mutate"),
                    help="persistent scratch copy (default: .mutate/ in the repository)")
    ap.add_argument("--timeout", type=float, default=600, help="seconds per test run (default 600)")
    ap.add_argument("--no-fail", action="store_true", help="exit 0 even if mutations survive")
    ap.add_argument("--skip-baseline", action="store_true",
                    help="do not first check that the selected test files pass on the clean copy")
    ap.add_argument("--keep-logs", action="store_true",
                    help="keep the pytest output of every mutation in <workdir>/logs/")
    args = ap.parse_args(argv)

    selected = MUTATIONS
    ids = {m["id"] for m in MUTATIONS}
    assert len(ids) == len(MUTATIONS), "duplicate mutation ids"
    if args.only:
        want = [s.strip() for s in args.only.split(",") if s.strip()]
        unknown = [s for s in want if s not in ids]
        if unknown:
            ap.error("unknown mutation id(s): %s" % ", ".join(unknown))
        selected = [m for m in selected if m["id"] in want]
    if args.family:
        fams = {s.strip() for s in args.family.split(",") if s.strip()}
        selected = [m for m in selected if m["family"] in fams]

    if args.list:
        for m in selected:
            print("%-28s %-11s %s%s" % (m["id"], m["family"], m["file"],
                                        "  (issue 13 review)" if m.get("known") else ""))
            print("    %s" % m["breaks"])
            print("    - %s" % m["orig"].strip().replace("\n", "\n      "))
            print("    + %s" % m["new"].strip().replace("\n", "\n      "))
            print("    tests: %s" % " ".join(m["tests"]))
        return 0
    if not selected:
        ap.error("no mutation selected")

    workdir = os.path.abspath(args.workdir)
    os.makedirs(workdir, exist_ok=True)
    logdir = os.path.join(workdir, "logs")
    os.makedirs(logdir, exist_ok=True)
    n = sync(workdir)
    print("synced %s (%d files changed)" % (workdir, n), flush=True)

    # Stale entries first: they need no build.
    stale = {}
    for m in selected:
        text, why = check_snippet(workdir, m)
        if text is None:
            stale[m["id"]] = why

    print("building the clean copy ...", flush=True)
    ok, dt = build(workdir, os.path.join(logdir, "build-clean.log"))
    if not ok:
        print("clean build failed (%s): see %s" % ("%.0fs" % dt, os.path.join(logdir, "build-clean.log")))
        return 2
    print("built in %.0fs" % dt, flush=True)
    rc, out = _run([sys.executable, "-c", "import invrender._C as c; print(c.__file__)"], workdir,
                   _env(workdir))
    if rc != 0 or not out.strip().startswith(workdir + os.sep):
        print("the scratch copy's invrender is not the one imported:\n" + out)
        return 2

    if not args.skip_baseline:
        files = sorted({t for m in selected if m["id"] not in stale for t in m["tests"]})
        if files:
            status, dt, detail, out = run_tests(workdir, files, args.timeout)
            print("baseline %s: %s in %.0fs %s" % (" ".join(files),
                  "pass" if status == "SURVIVED" else "FAIL", dt, detail), flush=True)
            if status != "SURVIVED":
                print(out[-3000:])
                print("the tests fail on the clean copy: fix that first (or --skip-baseline)")
                return 2

    def _terminate(signum, frame):
        raise KeyboardInterrupt  # so that `finally` restores the mutated file on kill / SIGTERM

    signal.signal(signal.SIGTERM, _terminate)
    rows = []
    dirty = False  # a restored csrc file not yet rebuilt
    try:
        for m in selected:
            row = dict(id=m["id"], family=m["family"], status="", seconds=0.0, detail="")
            rows.append(row)
            if m["id"] in stale:
                row.update(status="STALE", detail=stale[m["id"]] + " in " + m["file"])
                print("%-28s STALE (%s)" % (m["id"], row["detail"]), flush=True)
                continue
            path = os.path.join(workdir, m["file"])
            text, why = check_snippet(workdir, m)
            if text is None:
                row.update(status="STALE", detail=why + " in " + m["file"])
                continue
            t0 = time.time()
            native = m["file"].startswith("csrc/")
            try:
                with open(path, "w", newline="") as f:
                    f.write(text.replace(m["orig"], m["new"]))
                if native or dirty:
                    ok, _ = build(workdir, os.path.join(logdir, "build-%s.log" % m["id"]))
                    dirty = False
                    if not ok:
                        row.update(status="BUILD-FAILED", seconds=time.time() - t0,
                                   detail="see " + os.path.join(logdir, "build-%s.log" % m["id"]))
                        print("%-28s BUILD-FAILED" % m["id"], flush=True)
                        continue
                status, _, detail, out = run_tests(workdir, m["tests"], args.timeout)
                if args.keep_logs:
                    with open(os.path.join(logdir, "pytest-%s.log" % m["id"]), "w") as f:
                        f.write(out)
                row.update(status=status, seconds=time.time() - t0, detail=detail)
                print("%-28s %-8s %5.0fs %s" % (m["id"], status, row["seconds"], detail), flush=True)
            finally:
                with open(path, "w", newline="") as f:
                    f.write(text)
                dirty = dirty or native
    except KeyboardInterrupt:
        print("\ninterrupted: files restored; the scratch copy is rebuilt clean on the next run")
        rows = [r for r in rows if r["status"]]
        print_table(rows)
        return 130

    if dirty:
        print("rebuilding the clean copy ...", flush=True)
        ok, _ = build(workdir, os.path.join(logdir, "build-final.log"))
        if not ok:
            print("final clean rebuild failed: see " + os.path.join(logdir, "build-final.log"))
    print_table(rows)
    bad = [r for r in rows if r["status"] in STATUS_FAIL]
    return 1 if bad and not args.no_fail else 0


if __name__ == "__main__":
    sys.exit(main())
