"""What a resumed run may change (asmnet_jax/config_changes.py): pure functions, no training."""

import json

import pytest

from asmnet_jax import config_changes as cc
from asmnet_jax.config_base import base_config, config_keys, default_config


def _saved(config):
    """``config.json`` as ``train`` writes it, read back."""
    return json.loads(config.to_json_best_effort(indent=2))


def _keys(changes):
    return [c.key for c in changes]


def test_the_same_config_has_no_changes():
    for config in (base_config(), default_config()):
        assert cc.compare_for_resume(_saved(config), config) == ([], [])


def test_every_schema_key_is_classified():
    """A new schema key is refused on resume until it is listed; list it in ALLOWED or REFUSED."""
    unlisted = [key for key in config_keys()
                if not any(cc._matches(key, entry) for entry in cc.ALLOWED | cc.REFUSED)]
    assert not unlisted, unlisted
    both = [key for key in config_keys()
            if any(cc._matches(key, e) for e in cc.ALLOWED)
            and any(cc._matches(key, e) for e in cc.REFUSED)]
    assert not both, both


def test_unknown_keys_are_refused():
    assert not cc.is_allowed("some_future_key")
    saved = _saved(base_config())
    new = base_config()
    new.unlock()
    new.some_future_key = 3
    refused, allowed = cc.compare_for_resume(saved, new)
    assert refused == [cc.Change("some_future_key", cc.MISSING, 3)] and allowed == []
    assert repr(cc.MISSING) == "(not set)"


def test_model_data_and_loss_changes_are_refused_and_named():
    saved = _saved(default_config())
    new = default_config()
    new.input_size = 96
    new.landmark_loss = "l2"
    new.augment.scale_range = (0.9, 1.1)
    new.optimizer.learning_rate = 1e-3
    new.num_epochs = 40          # allowed
    new.progress_bar = False     # allowed
    refused, allowed = cc.compare_for_resume(saved, new)
    assert refused == [cc.Change("landmark_loss", "l1", "l2"), cc.Change("input_size", 64, 96),
                       cc.Change("augment.scale_range", [0.8, 1.2], [0.9, 1.1]),
                       cc.Change("optimizer.learning_rate", 0.002, 0.001)]
    assert allowed == [cc.Change("num_epochs", 24, 40), cc.Change("progress_bar", True, False)]


@pytest.mark.parametrize("key, value", [
    ("model", "mnv2"), ("num_landmarks", 98), ("dtype", "bfloat16"), ("bn_momentum", 0.99),
    ("dataset", "w300"), ("train_split", "trainval"), ("margin", 0.2), ("batch_size", 64),
    ("seed", 1), ("ema_decay", 0.0), ("init", "imagenet"), ("head_init", "keras"),
    ("asm_loss", False), ("head_l2", 0.0), ("input_range", "signed"),
    ("synthetic.train", 800), ("augment.enabled", False), ("optimizer.name", "adamw"),
    ("distill_teacher", "/runs/teacher"),
])
def test_refused(key, value):
    new = default_config()
    group, _, leaf = key.rpartition(".")
    (new[group] if group else new)[leaf] = value
    refused, allowed = cc.compare_for_resume(_saved(default_config()), new)
    assert _keys(refused) == [key] and allowed == []


@pytest.mark.parametrize("key, value", [
    ("num_epochs", 48), ("max_steps", 10), ("log_every_steps", 5), ("eval_every_epochs", 2),
    ("checkpoint_every_epochs", 2), ("keep_checkpoints", 1), ("progress_bar", False),
    ("final_flip_eval", True), ("input", "host"), ("num_workers", 2),
    ("data_dir", "/data/tfds"), ("arrays_dir", "/data/npz"), ("depthwise_impl", "xla"),
])
def test_allowed(key, value):
    new = default_config()
    new[key] = value
    refused, allowed = cc.compare_for_resume(_saved(default_config()), new)
    assert refused == [] and _keys(allowed) == [key]


def test_settings_the_run_does_not_read_are_not_changes():
    saved_config = default_config()
    saved_config.dataset = "w300"
    new = default_config()
    new.dataset = "w300"
    new.synthetic.train = 10                 # no synthetic data
    new.init_path = "/elsewhere"              # init="scratch"
    new.init_bn_images = 0                   # not from ImageNet
    new.optimizer.weight_decay = 0.05        # adam, not adamw
    new.optimizer.time_decay = 0.0           # cosine, not authors_cyclic
    new.distill_weight = 0.5                 # no distillation teacher
    assert cc.compare_for_resume(_saved(saved_config), new) == ([], [])
    # ... but they are changes where either config reads them
    new.optimizer.name = "adamw"
    refused, _ = cc.compare_for_resume(_saved(saved_config), new)
    assert _keys(refused) == ["optimizer.name", "optimizer.weight_decay"]
    saved_config.distill_teacher = new.distill_teacher = "/runs/teacher"
    refused, _ = cc.compare_for_resume(_saved(saved_config), new)
    assert _keys(refused) == ["distill_weight", "optimizer.name", "optimizer.weight_decay"]


def test_an_old_config_json_without_newer_keys():
    """Keys added to the schema later compare equal to the value the old run used: the schema
    default, or the old behaviour where the default changed (bn_momentum, head_init)."""
    saved = _saved(base_config())
    for key in ("landmark_loss", "init", "init_path", "init_bn_images", "input_range",
                "final_flip_eval", "ema_decay", "input", "arrays_dir", "bn_momentum",
                "head_init"):
        del saved[key]
    del saved["augment"]["noise_enabled"]
    saved["a_key_since_removed"] = 1         # ignored: nothing reads it now
    new = base_config()
    refused, allowed = cc.compare_for_resume(saved, new)
    assert refused == [cc.Change("bn_momentum", 0.999, 0.9),
                       cc.Change("head_init", "keras", "mean")]
    assert allowed == []
    saved.update(bn_momentum=0.9, head_init="mean")
    assert cc.compare_for_resume(saved, new) == ([], [])
    new.landmark_loss = "l1"                 # the old run's loss was the default, l2
    refused, _ = cc.compare_for_resume(saved, new)
    assert refused == [cc.Change("landmark_loss", "l2", "l1")]


def test_values_compare_as_json():
    saved = _saved(base_config())
    saved["num_epochs"] = 10.0               # 10 == 10.0
    saved["optimizer"]["warmup_epochs"] = 1  # an int in a float field
    assert cc.compare_for_resume(saved, base_config()) == ([], [])
    saved["asm_loss"] = 1                    # True is not 1
    assert _keys(cc.compare_for_resume(saved, base_config())[0]) == ["asm_loss"]


def test_the_error_message_is_one_line_naming_each_key_and_both_values():
    changes = [cc.Change("input_size", 64, 96), cc.Change("landmark_loss", "l2", "l1")]
    assert cc.resume_error_message(changes, "W/config.json") == (
        "W/config.json: this run was trained with config.input_size=64 (not 96) and "
        "config.landmark_loss='l2' (not 'l1'); resume it without these changes (--config file "
        "or --config.KEY overrides), or start a new --workdir")
    three = changes + [cc.Change("augment.scale_range", [0.8, 1.2], [0.9, 1.1])]
    message = cc.resume_error_message(three)
    assert "\n" not in message and message.startswith(
        "this run was trained with config.input_size=64 (not 96), config.landmark_loss='l2' "
        "(not 'l1') and config.augment.scale_range=[0.8, 1.2] (not [0.9, 1.1]); resume it "
        "without these changes")
    assert "without this change" in cc.resume_error_message(changes[:1])


def test_the_log_message_of_allowed_changes():
    assert cc.resume_log_message([]) == ""
    assert cc.resume_log_message([cc.Change("num_epochs", 10, 20)]) == (
        "resuming with config.num_epochs=20 (was 10)")
