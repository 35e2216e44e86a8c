"""The `zoo` command: list, info, errors, demo."""
from zoo.cli import main


def test_list_filters(capsys):
    assert main(["list", "vit_*_224"]) == 0
    out = capsys.readouterr().out
    assert "vit_tiny_patch16_224" in out and "vit_micro_patch4_32" not in out
    assert main(["list", "--pretrained", "vit_tiny*"]) == 0
    assert "vit_tiny_patch16_224.augreg_in21k_ft_in1k" in capsys.readouterr().out
    assert main(["list", "nothing_like_this*"]) == 1


def test_info_prints_the_facts(capsys):
    assert main(["info", "vit_tiny_patch16_224"]) == 0
    out = capsys.readouterr().out
    assert "parameters: 5,717,416" in out
    assert "GFLOPs at (3, 224, 224): 2.150" in out
    assert "hf-hub:timm/vit_tiny_patch16_224.augreg_in21k_ft_in1k" in out


def test_unknown_name_is_a_short_error(capsys):
    assert main(["info", "vit_tiny_patch16_22"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: Unknown model") and "Traceback" not in err


def test_demo_runs_offline(capsys, monkeypatch):
    monkeypatch.setenv("ZOO_OFFLINE", "1")
    assert main(["demo"]) == 0
    out = capsys.readouterr().out
    assert "architectures" in out and "correct" in out
