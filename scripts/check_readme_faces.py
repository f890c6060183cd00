"""Run the README's faces workflow as written, on real photos, and say whether the faces are gone.

    python scripts/check_readme_faces.py            # writes the "readme-faces" section of docs/benchmarks.md
    python scripts/check_readme_faces.py --no-doc   # prints only

The photos: scikit-image's astronaut and coffee cup (colour) and matplotlib's Grace Hopper. The
commands are the README's "Faces in survey photos" block (its base, assets/demo_base, may be
swapped with --base) with `preprocess --no-fail-closed` (so nothing but the unlearned generator
hides a face). Then MTCNN and dlib's face descriptor look at the outputs: faces found (upright,
and at the post-check's four angles), identities still matched, and PSNR of the pixels away
from faces against the input (colour kept?).
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchdoc import write_section  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"


def readme_commands() -> list[str]:
    """The imgunlearn commands of the README's faces block, in order."""
    text = README.read_text()
    block = text[text.index("## Faces in survey photos"):]
    block = block[block.index("```bash") + len("```bash"):]
    block = block[:block.index("```")].replace("\\\n", " ")  # join continued lines
    return [" ".join(line.split()) for line in block.splitlines() if line.strip().startswith(".venv/bin/imgunlearn")]


def make_photos(folder: Path) -> None:
    import matplotlib.cbook
    from skimage import data

    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(data.astronaut()).save(folder / "astronaut.png")
    Image.fromarray(data.coffee()).save(folder / "coffee.png")
    with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as handle:
        Image.open(handle).convert("RGB").save(folder / "grace_hopper.jpg", quality=95)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "readme-faces", help="scratch folder")
    parser.add_argument("--base", type=Path, default=ROOT / "assets" / "demo_base")
    parser.add_argument("--no-doc", action="store_true")
    args = parser.parse_args(argv)
    command = shlex.join(["python", "scripts/check_readme_faces.py", *(argv if argv is not None else sys.argv[1:])])
    work = args.work.resolve()
    if work.exists():
        import shutil

        shutil.rmtree(work)
    make_photos(work / "photos")
    venv_bin = Path(sys.executable).parent
    timings = []
    for line in readme_commands():
        line = line.replace("assets/demo_base", str(args.base.resolve()))
        if "preprocess" in line:  # fail-closed is preprocess's default: turn it off
            line = line.replace(" --fail-closed", "") + " --no-fail-closed"
        words = shlex.split(line)
        words[0] = str(venv_bin / "imgunlearn")
        started = time.perf_counter()
        result = subprocess.run(words, cwd=work, capture_output=True, text=True)
        timings.append((line, time.perf_counter() - started, result.returncode))
        print(f"$ {line}\n  exit {result.returncode} in {timings[-1][1]:.0f} s\n{result.stdout[-600:]}", flush=True)
        if result.returncode not in (0, 1) or (result.returncode == 1 and "preprocess" not in line):
            print(result.stderr[-2000:], file=sys.stderr)
            return 1

    from imgunlearn.concepts.faces import FaceFinder
    from imgunlearn.metrics.identity import FaceIdentity
    from imgunlearn.data import image_to_tensor, open_rgb
    from imgunlearn.evaluation import non_face_mask
    from imgunlearn.metrics import faces_found, masked_psnr

    finder, identity = FaceFinder(), FaceIdentity()
    # What preprocess's own post-check looks at: the output turned by 0, 90, 180 and 270 degrees.
    post_check = FaceFinder(rotations=(0, 90, 180, 270))
    clean = work / "runs" / "clean"
    rows = []
    for photo in sorted((work / "photos").iterdir()):
        source = open_rgb(photo)
        output = open_rgb(clean / photo.name)  # same name and tree (the map PNG sits beside it)
        before = finder.detect(source).boxes
        after = finder.detect(output).boxes
        still = faces_found(before, after) if len(before) else np.zeros(0, bool)
        turned = post_check.detect(output).boxes
        turned_on_faces = int(faces_found(before, turned).sum()) if len(before) and len(turned) else 0
        leak = identity.leak(source, output, before) if len(before) else {"matched": 0, "faces": 0, "distances": []}
        x, y = image_to_tensor(source)[None], image_to_tensor(output)[None]
        keep = non_face_mask([torch.as_tensor(np.asarray(before, np.float32).reshape(-1, 4))], *x.shape[-2:],
                             margin=8)
        rows.append({"photo": photo.name, "faces_in_input": int(len(before)), "faces_still_found": int(still.sum()),
                     "post_check_detections": int(len(turned)), "post_check_on_input_faces": turned_on_faces,
                     "post_check_boxes": np.round(np.asarray(turned, np.float32).reshape(-1, 4)).astype(int).tolist(),
                     "identity_matched": int(leak["matched"]),
                     "identity_distances": [round(float(d), 3) for d in leak["distances"]],
                     "non_face_psnr_vs_input": masked_psnr(y, x, keep)})
        print(rows[-1], flush=True)

    removed = all(r["faces_still_found"] == 0 and r["post_check_on_input_faces"] == 0 and r["identity_matched"] == 0
                  for r in rows)
    lines = ["## The README's faces workflow on real photos", "",
             f"Command: `{command}`: the README's \"Faces in survey photos\" commands as written, in a fresh folder of "
             "three photos (scikit-image's astronaut and coffee cup, matplotlib's Grace Hopper), base "
             f"`{args.base.relative_to(ROOT) if args.base.resolve().is_relative_to(ROOT) else args.base}`, "
             "`preprocess` with `--no-fail-closed`. Then MTCNN on each output (faces still found: a detection "
             "centre inside an input face's box; post-check: MTCNN at 0, 90, 180 and 270° as `preprocess` "
             "checks, its detections and how many fall on an input face), dlib's face descriptor (identity "
             "matched: output crop within 0.6 of the input crop) and PSNR against the input of the pixels 8 px "
             "or more away from any face.", "",
             "| command | exit | seconds |", "|---|---|---|"]
    shown = [(re.sub(r"/\S*/assets/", "assets/", line), seconds, code) for line, seconds, code in timings]
    lines += [f"| `{line}` | {code} | {seconds:.0f} |" for line, seconds, code in shown]
    lines += ["", "| photo | faces in input | still found | post-check detections (on input faces) [boxes] "
              "| identity matched (distances) | non-face PSNR vs input |",
              "|---|---|---|---|---|---|"]
    lines += [f"| {r['photo']} | {r['faces_in_input']} | {r['faces_still_found']} | {r['post_check_detections']} "
              f"({r['post_check_on_input_faces']}) {r['post_check_boxes'] or ''} | {r['identity_matched']} "
              f"({', '.join(f'{d:.2f}' for d in r['identity_distances']) or '—'}) | {r['non_face_psnr_vs_input']:.2f} dB |"
              for r in rows]
    lines += ["", f"Faces removed with `--no-fail-closed`: {'yes' if removed else 'no'}."]
    table = "\n".join(lines)
    print("\n" + table)
    (work / "result.json").write_text(json.dumps({"rows": rows, "removed": removed}, indent=1))
    if not args.no_doc:
        write_section("readme-faces", table)
    return 0 if removed else 1


if __name__ == "__main__":
    sys.exit(main())
