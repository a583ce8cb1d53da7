import json

import pytest

from progdistill.core.config import ConfigError
from progdistill.distill.schedules import TwoShotAuto
from progdistill.recipes.ablation import CONVERGED, ablation_checkpoints, claim_directory


class Curve:
    def __init__(self, steps, values, metric="eval_accuracy"):
        self.steps, self.values, self.metric = steps, values, metric

    def curve(self, metric):
        assert metric == self.metric
        return self.steps, self.values


# an accuracy plateau at 0.5, a rise over steps 400..700, then a slow climb to 1.0
STEPS = list(range(0, 1300, 100))
ACCURACY = [0.5, 0.5, 0.51, 0.5, 0.5, 0.6, 0.8, 0.95, 0.99, 0.995, 0.9985, 0.999, 1.0]


def test_before_during_after_on_a_synthetic_transition():
    window = TwoShotAuto().window(STEPS, ACCURACY)
    picks = ablation_checkpoints(Curve(STEPS, ACCURACY))
    assert picks["during"] == window.middle
    assert picks["before"] == max(s for s in STEPS if s < window.start)
    # after: the first checkpoint past the window whose accuracy is within CONVERGED of the final level
    converged = [s for s, v in zip(STEPS, ACCURACY) if s > window.end and window.after - v <= CONVERGED]
    assert picks["after"] == converged[0]
    assert ACCURACY[STEPS.index(picks["after"])] >= 0.998
    assert picks["before"] < picks["during"] < picks["after"]


def test_ablation_checkpoints_follow_the_transition_two_shot_auto_finds():
    class LossCurve:  # a masked-LM loss: a fall from the untrained model, a plateau, a sharp drop, a slow decay
        def curve(self, metric):
            assert metric == "eval_loss"
            steps = list(range(0, 2100, 100))
            values = [
                9.0,
                6.0,
                4.5,
                4.01,
                4.0,
                3.98,
                4.0,
                3.99,
                3.8,
                3.5,
                3.3,
                3.2,
                3.15,
                3.1,
                3.08,
                3.07,
                3.06,
                3.055,
                3.05,
                3.049,
                3.048,
            ]
            return steps, values

    picks = ablation_checkpoints(LossCurve(), "eval_loss")
    steps, values = LossCurve().curve("eval_loss")
    assert picks["during"] == TwoShotAuto(metric="eval_loss").pick(steps, values)
    assert picks["before"] < picks["during"] < picks["after"]
    assert picks["before"] > 0  # the fall from the untrained model is not the transition


def test_a_flat_teacher_or_a_transition_at_the_first_checkpoint_is_refused():
    with pytest.raises(ConfigError, match="needs a teacher with a phase transition"):
        ablation_checkpoints(Curve(STEPS, [0.5] * len(STEPS)))
    rising = [0.5, 0.8, 0.95, 0.99, 1.0, 1.0, 1.0, 1.0]
    with pytest.raises(ConfigError, match="starts at its first checkpoint"):
        ablation_checkpoints(Curve(list(range(0, 800, 100)), rising))


def test_claim_directory_reuses_same_settings_and_refuses_others(tmp_path):
    directory = tmp_path / "two-shot"
    settings = {"first_steps": 10, "checkpoints": {"before": 1, "during": 2, "after": 3}}
    claim_directory(directory, settings, overwrite=False)
    (directory / "during-seed0").mkdir()
    claim_directory(directory, settings, overwrite=False)  # same settings: the students stay
    assert (directory / "during-seed0").exists()
    other = settings | {"first_steps": 20}
    with pytest.raises(ConfigError, match="holds an ablation with other settings.*--overwrite"):
        claim_directory(directory, other, overwrite=False)
    assert (directory / "during-seed0").exists() and json.loads((directory / "settings.json").read_text()) == settings
    claim_directory(directory, other, overwrite=True)
    assert sorted(p.name for p in directory.iterdir()) == ["settings.json"]
    assert json.loads((directory / "settings.json").read_text()) == other
