"""The README's section "Using dm-tune from Python": its python blocks run as written.

Each ```python block runs in a fresh namespace, in a folder laid out as after
`dm-tune run studies/digits-quick.toml` (a `dm_tune.db` holding a campaign named
digits-quick, built by tests/fake_campaign.py without training, and its export under
dm_tune_reports/digits-quick/). A ```text block right after a python block is what that
block prints, exactly.
"""

from __future__ import annotations

import contextlib
import io
import re
import warnings
from pathlib import Path

import pytest

from dm_tune import guidelines
from tests.fake_campaign import build_campaign

README = Path(__file__).resolve().parents[1] / "README.md"
SECTION = "## Using dm-tune from Python"


def section_blocks() -> list[tuple[str, str | None]]:
    """(python code, the text block after it or None), in README order."""
    text = README.read_text(encoding="utf-8")
    assert text.count(SECTION + "\n") == 1, "the README lost its Python section"
    body = text.split(SECTION + "\n", 1)[1]
    body = re.split(r"^## ", body, maxsplit=1, flags=re.M)[0]
    fences = list(re.finditer(r"^```(\w+)\n(.*?)^```\n", body, flags=re.M | re.S))
    blocks = []
    for i, fence in enumerate(fences):
        if fence.group(1) != "python":
            continue
        following = fences[i + 1] if i + 1 < len(fences) else None
        output = None
        if (following is not None and following.group(1) == "text"
                and not body[fence.end():following.start()].strip()):
            output = following.group(2)
        blocks.append((fence.group(2), output))
    return blocks


@pytest.fixture(scope="module")
def quick_folder(tmp_path_factory) -> Path:
    """A folder as `dm-tune run studies/digits-quick.toml` leaves it (database, export)."""
    folder = tmp_path_factory.mktemp("readme")
    url = build_campaign(f"sqlite:///{folder / 'dm_tune.db'}", campaign="digits-quick")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        results = guidelines.load_campaign(url, "digits-quick")
    reports = folder / "dm_tune_reports" / "digits-quick"
    reports.mkdir(parents=True)
    guidelines.write_json(guidelines.to_export_dict(results), reports / "recommendations.json")
    return folder


def _run(code: str, folder: Path, monkeypatch) -> tuple[dict, str]:
    import torch

    monkeypatch.chdir(folder)
    namespace: dict = {"__name__": "__readme__"}
    printed = io.StringIO()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a 64-128-10 MLP: a second thread only waits on a busy CPU
    try:
        with contextlib.redirect_stdout(printed):
            exec(compile(code, str(README), "exec"), namespace)  # noqa: S102 - README code
    finally:
        torch.set_num_threads(threads)
    return namespace, printed.getvalue()


def test_the_section_has_the_three_uses():
    codes = [code for code, _ in section_blocks()]
    assert len(codes) == 3
    assert "DMLoss(" in codes[0] and "loss.backward()" in codes[0]
    assert "corrupt_labels(" in codes[1]
    assert "load_campaign(" in codes[2] and "load_export(" in codes[2]


def test_dm_loss_in_a_training_loop(quick_folder, monkeypatch):
    code, output = section_blocks()[0]
    namespace, printed = _run(code, quick_folder, monkeypatch)
    assert output is None
    # 40% symmetric noise, trained on the noisy labels: DM fits the clean ones
    assert namespace["accuracy"] > 0.85, printed
    assert 0.0 < namespace["loss"].item() < 0.6
    assert re.fullmatch(r"last batch's loss 0\.\d\d; accuracy on the clean labels 0\.\d\d\n",
                        printed), printed


def test_corrupt_labels_block_prints_what_the_readme_shows(quick_folder, monkeypatch):
    code, output = section_blocks()[1]
    _namespace, printed = _run(code, quick_folder, monkeypatch)
    assert output is not None and printed == output


def test_recommend_from_the_database_and_the_export(quick_folder, monkeypatch):
    code, output = section_blocks()[2]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # 0.35 is inside the searched rates: no warning
        namespace, printed = _run(code, quick_folder, monkeypatch)
    rec = namespace["rec"]
    assert not rec.extrapolated and rec.nearest_rates == (0.2, 0.4)
    first = printed.splitlines()[0]
    assert first == (f"mode {rec.emphasis_mode:.3f}, variance {rec.emphasis_variance:.3g}: "
                     f"one run scores {rec.expected_accuracy:.3f} on average, "
                     f"{rec.low_accuracy:.3f} or more 9 times in 10, P(collapse) "
                     f"{rec.collapse_probability:.2f}")
    assert printed.splitlines()[1:] == [f"note: {note}" for note in rec.notes]
    assert namespace["exported"].expected_accuracy == pytest.approx(rec.expected_accuracy,
                                                                     abs=1e-9)
