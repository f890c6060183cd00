"""No command ever writes into what it reads: outputs are resolved (symlinks followed) and
refused when they are an input or lie inside an input folder."""

from __future__ import annotations

import pytest

from imgunlearn.cli import main
from imgunlearn.concepts import split_survey
from imgunlearn.fileio import refuse_writes_into_inputs
from imgunlearn.pipelines import preprocess_folder

from conftest import tiny_generator
import test_survey
from test_survey import audit, sanitizer, tree_hashes

survey = test_survey.survey  # the survey-tree fixture


def test_refuse_writes_into_inputs_follows_links(tmp_path):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.png").write_bytes(b"x")
    out = tmp_path / "out"
    out.mkdir()
    (out / "link").symlink_to(src / "sub", target_is_directory=True)
    (out / "file.png").symlink_to(src / "a.png")
    refuse_writes_into_inputs([out / "b.png", None], [src, None, tmp_path / "hub/id-not-on-disk"])
    for bad in (src, src / "sub" / "x.png", out / "link" / "x.png", out / "file.png", src / "a.png"):
        with pytest.raises(ValueError, match="refusing to write there"):
            refuse_writes_into_inputs([bad], [src])
    with pytest.raises(ValueError, match="the input lies inside the output folder"):
        refuse_writes_into_inputs([tmp_path], [src])


def test_preprocess_never_writes_through_a_link_into_the_source(survey, tmp_path):
    before = tree_hashes(survey)
    dst = tmp_path / "out"
    dst.mkdir()
    (dst / "flight1").symlink_to(survey / "flight1", target_is_directory=True)  # planted folder link
    (dst / "flight2").mkdir()
    (dst / "flight2" / "c.tif").symlink_to(survey / "flight2" / "c.tif")  # planted file link
    summary = preprocess_folder(survey, dst, sanitizer(), progress=False)
    assert tree_hashes(survey) == before
    records = {r["relpath"]: r for r in audit(dst)}
    for rel in ("flight1/a.JPG", "flight1/deep/b.png", "flight2/c.tif"):
        assert "refusing to write there" in records[rel]["error"], rel
    assert summary.failed == 4 and summary.processed == 0  # (+ broken.jpg)


def test_split_survey_never_writes_through_a_link_into_the_source(survey, tmp_path):
    from imgunlearn.concepts import FaceFinder

    before = tree_hashes(survey)
    out = tmp_path / "split"
    out.mkdir()
    (out / "retain").symlink_to(survey, target_is_directory=True)
    with pytest.raises(ValueError, match="refusing to write there"):
        split_survey(survey, out, FaceFinder(), tile=16, progress=False)
    assert tree_hashes(survey) == before


@pytest.mark.parametrize("command", ["generate", "find-faces", "evaluate", "train", "unlearn", "preprocess",
                                     "split-survey"])
def test_every_command_refuses_an_output_inside_its_inputs(command, survey, tmp_path, capsys):
    before = tree_hashes(survey)
    entries = sorted(p.relative_to(survey).as_posix() for p in survey.rglob("*"))
    model = tmp_path / "model"
    tiny_generator("kl").save_pretrained(model)
    argv = {
        "generate": ["generate", "--generator", str(model), "--input", str(survey), "--output", str(survey / "sub")],
        "find-faces": ["find-faces", str(survey), "--output", str(survey / "flight1" / "a.JPG")],
        "evaluate": ["evaluate", "--generator", str(model), "--forget", str(survey / "flight1"), "--retain",
                     str(survey / "flight2"), "--output", str(survey / "flight1" / "report.json")],
        "train": ["train", "--data", str(survey), "--output", str(survey / "model")],
        "unlearn": ["unlearn", "--generator", str(model), "--forget", str(survey / "flight1"), "--retain",
                    str(survey / "flight2"), "--output", str(model)],
        "preprocess": ["preprocess", str(survey), "--generator", str(model), "--output", str(survey / "clean")],
        "split-survey": ["split-survey", str(survey), "--output", str(survey / "tiles")],
    }[command]
    assert main(argv) == 2
    error = capsys.readouterr().err
    assert error.startswith("imgunlearn: error: ") and "Traceback" not in error
    assert "inside" in error
    assert tree_hashes(survey) == before
    assert sorted(p.relative_to(survey).as_posix() for p in survey.rglob("*")) == entries  # no new folder
