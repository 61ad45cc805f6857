"""Published IRRA/ICLF run directories evaluated with `iclf test --config_file`, `model.init_from`, and the
refusals of `iclf test` (a config that is not a run's, a configs.yaml of neither format, a best.pth
whose keys do not map): each one line on stderr, exit 2."""

import json
from pathlib import Path

import pytest
import torch
import yaml

from iclf.cli import main
from iclf.config import load_config
from iclf.data.pedes import load_pedes
from iclf.engine import train
from iclf.engine.prepare import ensure_synthetic
from iclf.engine.runs import read_run_yaml
from iclf.engine.trainer import build_model
from reference_run import build_reference_model, write_reference_run

ROOT = Path(__file__).resolve().parents[2]
SIZE = (64, 32)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("refdata")
    ensure_synthetic(root, "CUHK-PEDES", ids=16, images_per_id=2, seed=0)
    return root


@pytest.fixture(scope="module")
def num_classes(data_root):
    return load_pedes("CUHK-PEDES", data_root).num_train_ids


def publish(kind, tmp_path_factory, num_classes):
    model = build_reference_model(kind=kind, num_classes=num_classes, image_size=SIZE)
    run = write_reference_run(tmp_path_factory.mktemp(kind) / f"{kind}_run", model, kind=kind,
                              dataset="CUHK-PEDES", root_dir="/home/someone/data",
                              image_size=SIZE, cmt_depth=1)
    return kind, model, run


@pytest.fixture(scope="module", params=["irra", "iclf"])
def published(request, tmp_path_factory, num_classes):
    """An IRRA-layout (fp16) or ICLF-layout run directory written from a random project model."""
    return publish(request.param, tmp_path_factory, num_classes)


@pytest.fixture(scope="module")
def irra_published(tmp_path_factory, num_classes):
    return publish("irra", tmp_path_factory, num_classes)


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_the_run_directory_is_in_the_reference_layout(published):
    kind, _, run = published
    text = (run / "configs.yaml").read_text()
    assert "img_size: !!python/tuple" in text  # what yaml.dump(vars(args)) writes
    with pytest.raises(yaml.YAMLError):
        yaml.safe_load(text)  # which the safe loader alone refuses ...
    assert read_run_yaml(run / "configs.yaml")["img_size"] == SIZE  # ... and ours reads
    state = torch.load(run / "best.pth", weights_only=True)["model"]
    assert state["base_model.visual.proj"].dtype == (torch.float16 if kind == "irra"
                                                     else torch.float32)
    assert ("itm_head.0.weight" in state) == (kind == "iclf")


def test_safe_reading_builds_tuples_and_nothing_else(tmp_path):
    path = tmp_path / "configs.yaml"
    path.write_text("loss_names: sdm+id\ndataset_name: CUHK-PEDES\n"
                    "hook: !!python/object/apply:os.system ['echo owned']\n")
    with pytest.raises(Exception, match="not a YAML file iclf can read safely"):
        read_run_yaml(path)


def test_loading_it_back_gives_identical_features(published, data_root):
    kind, source, run = published
    cfg = load_config(ROOT / "experiments" / "synthetic.yaml",
                      ["model.pretrained=null", "model.build_pretrained=false", "lora=null",
                       f"model.image_size=[{SIZE[0]},{SIZE[1]}]", "fusion.style=irra",
                       "fusion.depth=1", "fusion.heads=2", f"model.init_from={run / 'best.pth'}",
                       "losses.weights.itm=" + ("1.0" if kind == "iclf" else "0.0")])
    model = build_model(cfg, num_classes=source.classifier.fc.out_features).eval()
    for (n, a), (_, b) in zip(source.named_parameters(), model.named_parameters()):
        assert torch.equal(a, b), n
    torch.manual_seed(0)
    images = torch.randn(3, 3, *SIZE)
    ids = torch.randint(1, 49000, (3, 77))
    ids[:, 0], ids[:, 12], ids[:, 13:] = 49406, 49407, 0
    with torch.no_grad():
        a, b = source(images, ids), model(images, ids)
    assert torch.equal(a.image_feat, b.image_feat) and torch.equal(a.text_feat, b.text_feat)
    assert torch.equal(a.image_tokens, b.image_tokens) and torch.equal(a.text_tokens, b.text_tokens)


def test_iclf_test_evaluates_a_published_run(published, data_root, capsys):
    kind, _, run = published
    code = main(["test", "--config_file", str(run / "configs.yaml"), "--root_dir", str(data_root)])
    out = capsys.readouterr().out
    assert code == 0, out
    preset = "iclf_release" if kind == "iclf" else "irra"
    assert f"an IRRA/ICLF run directory (loss_names" in out and f"the {preset} preset" in out
    assert main(["test", "--config_file", str(run / "configs.yaml"), "--root_dir", str(data_root),
                 "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(metrics) == {"R1", "R5", "R10", "mAP", "mINP"}
    # without --root_dir the config's own root_dir (the training machine's) is used: a clear error
    assert main(["test", "--config_file", str(run / "configs.yaml")]) == 2
    assert "/home/someone/data" in one_line_error(capsys)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_root):
    """A short irra-style run trained by iclf (tiny backbone, irra fusion, full fine-tuning)."""
    out = tmp_path_factory.mktemp("trained")
    cfg = load_config(ROOT / "experiments" / "irra_cuhk.yaml", [
        "model.backbone=tiny", "model.pretrained=null", f"model.image_size=[{SIZE[0]},{SIZE[1]}]",
        "fusion.depth=1", "fusion.heads=2", f"data.root={data_root}", "data.num_workers=0",
        "data.batch_size=8", "training.epochs=1", "training.max_steps_per_epoch=2",
        "schedule.warmup_epochs=0", "training.precision=fp32", "device=cpu",
        f"output_dir={out}", "evaluation.batch_size=64"])
    return cfg, train(cfg, console=False, progress=False)


def test_an_exported_trained_run_keeps_its_test_metrics(trained, tmp_path, data_root, capsys):
    """A run iclf trained, exported in IRRA's layout (fp32) and evaluated with iclf test: the same
    test metrics as the run's own."""
    from iclf.engine import checkpoint as ckpt
    from iclf.models.reference import reference_state_dict
    from reference_run import irra_args

    cfg, result = trained
    model = build_model(cfg, num_classes=load_pedes("CUHK-PEDES", data_root).num_train_ids)
    ckpt.load_trainable_state_dict(model, ckpt.load(Path(result.run_dir) / "checkpoint" / "best.pt"))
    run = tmp_path / "exported"
    run.mkdir()
    args = irra_args(kind="irra", name="exported", dataset="CUHK-PEDES", root_dir=str(data_root),
                     img_size=SIZE, cmt_depth=1)
    (run / "configs.yaml").write_text(yaml.dump(args))
    torch.save({"model": reference_state_dict(model)}, run / "best.pth")
    assert main(["test", "--config_file", str(run / "configs.yaml"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == result.test


def test_init_from_starts_training_from_the_checkpoint(irra_published, tmp_path, data_root):
    _, source, run = irra_published
    cfg = load_config(ROOT / "experiments" / "irra_cuhk.yaml", [
        "model.backbone=tiny", "model.pretrained=null", f"model.image_size=[{SIZE[0]},{SIZE[1]}]",
        "fusion.depth=1", "fusion.heads=2", f"data.root={data_root}", "data.num_workers=0",
        "data.batch_size=8", "training.epochs=1", "training.max_steps_per_epoch=1",
        "schedule.warmup_epochs=0", "training.precision=fp32", "device=cpu",
        f"output_dir={tmp_path}", f"model.init_from={run / 'best.pth'}"])
    assert Path(cfg.model.init_from).is_file()
    result = train(cfg, console=False, progress=False)
    saved = load_config(Path(result.run_dir) / "configs.yaml")
    assert saved.model.init_from == str((run / "best.pth").resolve())
    # one Adam step (lr 1e-5) on top of the checkpoint: still within 1e-3 of it everywhere
    from iclf.engine import checkpoint as ckpt

    best = ckpt.load(Path(result.run_dir) / "checkpoint" / "best.pt")
    w = source.backbone.visual.conv1.weight
    assert (best["backbone.visual.conv1.weight"] - w).abs().max() < 1e-3


def test_init_from_with_pretrained_is_refused(irra_published, capsys):
    _, _, run = irra_published
    code = main(["train", str(ROOT / "experiments" / "irra_cuhk.yaml"),
                 f"model.init_from={run / 'best.pth'}", "--dry-run"])
    assert code == 2 and "model.init_from" in one_line_error(capsys)


# --------------------------------------------------------------------------- refusals


def test_a_plain_experiment_file_is_refused_before_any_data_is_made(tmp_path, capsys):
    experiment = tmp_path / "exp.yaml"
    root = tmp_path / "never-made"
    experiment.write_text(yaml.safe_dump({
        "base": str(ROOT / "experiments" / "synthetic.yaml"), "data": {"root": str(root)}}))
    assert main(["test", "--config_file", str(experiment)]) == 2
    msg = one_line_error(capsys)
    assert str(experiment) in msg and "not a trained run's config" in msg
    assert not root.exists()  # refused before the synthetic dataset was generated


def test_test_reads_the_file_it_is_given(trained, capsys):
    """`--config_file X.yaml` is X, not the configs.yaml beside it."""
    _, result = trained
    run = Path(result.run_dir)
    other = run / "other.yaml"
    other.write_text((run / "configs.yaml").read_text().replace("depth: 1", "depth: 2"))
    assert main(["test", "--config_file", str(other)]) == 2  # a depth-2 model for depth-1 weights
    assert "weights do not match the model built from the config" in one_line_error(capsys)
    assert main(["test", "--config_file", str(run / "configs.yaml"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == result.test


def test_a_configs_yaml_of_neither_format_is_refused(tmp_path, capsys):
    path = tmp_path / "configs.yaml"
    path.write_text("epochs: 3\nlearning_rate: 0.1\n")
    assert main(["test", "--config_file", str(path)]) == 2
    msg = one_line_error(capsys)
    assert "neither an iclf run config" in msg and "IRRA/ICLF" in msg and str(path) in msg


def test_an_irra_configs_yaml_without_best_pth_is_refused(published, tmp_path, capsys):
    _, _, run = published
    lonely = tmp_path / "configs.yaml"
    lonely.write_text((run / "configs.yaml").read_text())
    assert main(["test", "--config_file", str(lonely)]) == 2
    assert "no best.pth beside it" in one_line_error(capsys)


def test_a_best_pth_whose_keys_do_not_map_is_refused(published, tmp_path, data_root, capsys):
    kind, _, run = published
    bad = tmp_path / "bad_run"
    bad.mkdir()
    (bad / "configs.yaml").write_text((run / "configs.yaml").read_text())
    state = torch.load(run / "best.pth", weights_only=True)["model"]
    state["prompt_learner.ctx"] = torch.zeros(4, 8)  # a key no iclf module has
    torch.save({"model": state}, bad / "best.pth")
    assert main(["test", "--config_file", str(bad / "configs.yaml"), "--root_dir",
                 str(data_root)]) == 2
    msg = one_line_error(capsys)
    assert "best.pth" in msg and "'prompt_learner.ctx' does not map" in msg
    # and the loss list decides the heads: an ICLF checkpoint under IRRA's loss_names does not fit
    if kind == "iclf":
        args = read_run_yaml(run / "configs.yaml")
        args["loss_names"] = "sdm+mlm+id"
        (bad / "configs.yaml").write_text(yaml.dump(args))
        torch.save({"model": torch.load(run / "best.pth", weights_only=True)["model"]},
                   bad / "best.pth")
        assert main(["test", "--config_file", str(bad / "configs.yaml"), "--root_dir",
                     str(data_root)]) == 2
        assert "'itm_head.0.weight' does not map" in one_line_error(capsys)
