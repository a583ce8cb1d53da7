import pytest

from progdistill.probes import ngram_figure
from progdistill.store import report

WINDOWS = (3, 5)
STEPS = (0, 100, 200, 300)


def _records():
    records = []
    for t, step in enumerate(STEPS):
        scores = {
            f"{score}/{w}": {"median": 0.0 if t == 0 else 0.1 / (t * w)}
            for score in ("M_robust", "M_close")
            for w in WINDOWS
        }
        records.append({"model": "teacher", "step": step, "eval_loss": 3.0 - 0.5 * t, "ngram": scores})
    return [*records, {"model": "ce-seed0", "step": 300, "eval_loss": 2.0}]


@pytest.fixture
def drawn(monkeypatch):
    """The figure plot_ngram saves, kept open for inspection (and saved as usual)."""
    figures = []

    def keep(fig, path):
        figures.append(fig)
        fig.savefig(path)

    monkeypatch.setattr(ngram_figure, "save_figure", keep)
    return figures


def test_loss_and_two_curves_per_window_with_phases(drawn, tmp_path):
    phases = {"plateau": (0, 100), "sharp_drop": (100, 200), "slow_decay": (200, 300)}
    ngram_figure.plot_ngram(_records(), {"phases": phases}, WINDOWS, tmp_path / "ngram.png", "tiny")
    assert (tmp_path / "ngram.png").read_bytes()[:4] == b"\x89PNG"
    (fig,) = drawn
    left, right = fig.axes
    assert [line.get_label() for line in left.get_lines()] == ["teacher validation loss"]
    assert list(left.get_lines()[0].get_ydata()) == [3.0, 2.5, 2.0, 1.5]  # the teacher's records only
    labels = [line.get_label() for line in right.get_lines()]
    assert labels == ["M_robust, 3-gram", "M_close, 3-gram", "M_robust, 5-gram", "M_close, 5-gram"]
    assert right.get_lines()[0].get_ydata()[0] == 1e-6  # a median of 0 is drawn at the log scale's floor
    assert right.get_yscale() == "log" and right.get_ylabel() == "median total-variation distance"
    assert len(left.patches) == len(right.patches) == 3  # plateau, sharp drop, slow decay in both panels


def test_oracle_levels_and_l1_axis(drawn, tmp_path):
    oracle = {f"{score}/{w}": {"median": 0.02 * w} for score in ("M_robust", "M_close") for w in WINDOWS}
    oracle["M_close/5"]["median"] = 0.0  # cannot be drawn on the log scale: in the note only
    ngram_figure.plot_ngram(_records(), {"distance": "l1"}, WINDOWS, tmp_path / "n.png", "tiny", oracle=oracle)
    (fig,) = drawn
    right = fig.axes[1]
    levels = [line for line in right.get_lines() if line.get_linestyle() == ":"]
    assert sorted(line.get_ydata()[0] for line in levels) == pytest.approx([0.06, 0.06, 0.1])
    assert not any(axis.patches for axis in fig.axes)  # no phases detected: nothing shaded
    assert right.get_ylabel().startswith("median L1 distance")
    (note,) = right.texts
    assert "M_close: 0.06 / 0" in note.get_text() and "3 / 5-grams" in note.get_text()


def test_the_figure_is_saved_through_the_reports_atomic_writer(tmp_path):
    assert ngram_figure.save_figure is report.save_figure
    ngram_figure.plot_ngram(_records(), {}, WINDOWS, tmp_path / "ngram.png", "tiny")
    assert [p.name for p in tmp_path.iterdir()] == ["ngram.png"]
