"""save/load error handling and files; PEFT-made adapters imported into loracle give PEFT's outputs."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from loracle.adapters import (
    LoRAConfig,
    LoRASPConfig,
    adapter_layers,
    apply_adapter,
    export_peft,
    import_peft,
    load_adapter,
    save_adapter,
)
from loracle.adapters.io import MAX_CONFIG_BYTES, read_adapter_info
from loracle.errors import AdapterFileError
from adapter_helpers import HEADS, build, logits, make_config, randomize
from tiny_models import tiny_bert

PEFT_TARGETS = {
    "bert": ["query", "value", "dense"],
    "llama": ["q_proj", "v_proj", "down_proj"],
    "gpt2": ["c_attn", "c_fc"],
}


@pytest.mark.parametrize("model_kind", ["bert", "llama", "gpt2"])
def test_import_peft_made_adapter_matches_peft(model_kind, token_batch, tmp_path):
    peft = pytest.importorskip("peft")
    torch.manual_seed(0)
    config = peft.LoraConfig(r=4, lora_alpha=12, target_modules=PEFT_TARGETS[model_kind],
                             modules_to_save=[HEADS[model_kind]], init_lora_weights=False,
                             fan_in_fan_out=model_kind == "gpt2", use_rslora=model_kind == "llama")
    peft_model = peft.get_peft_model(build(model_kind), config).eval()
    with torch.no_grad():
        peft_model.base_model.model.get_submodule(HEADS[model_kind]).modules_to_save["default"].weight.normal_()
    expected = logits(peft_model, token_batch)
    peft_model.save_pretrained(tmp_path)

    model = import_peft(build(model_kind), tmp_path)
    n_peft = sum(1 for n, _ in peft_model.named_modules() if n.endswith("lora_A.default"))
    assert len(list(adapter_layers(model))) == n_peft > 0
    assert (logits(build(model_kind), token_batch) - expected).abs().max() > 1e-3
    torch.testing.assert_close(logits(model, token_batch), expected, rtol=1e-4, atol=1e-5)


def test_export_peft_files(tmp_path):
    model = apply_adapter(tiny_bert(), LoRASPConfig(rank=4, alpha=8, dropout=0.1, target_modules=["query"],
                                                    modules_to_save=["classifier"], use_rslora=True))
    randomize(model)
    export_peft(model, tmp_path)
    cfg = json.loads((tmp_path / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA" and cfg["r"] == 4 and cfg["lora_alpha"] == 8 and cfg["use_rslora"] is True
    assert cfg["lora_dropout"] == 0.1 and cfg["fan_in_fan_out"] is False and cfg["modules_to_save"] == ["classifier"]
    assert cfg["target_modules"] == [f"bert.encoder.layer.{i}.attention.self.query" for i in range(2)]
    tensors = load_file(tmp_path / "adapter_model.safetensors")
    assert sorted(tensors) == sorted(
        [f"base_model.model.bert.encoder.layer.{i}.attention.self.query.lora_{m}.weight" for i in range(2)
         for m in "AB"] + ["base_model.model.classifier.weight", "base_model.model.classifier.bias"])
    layer = next(iter(adapter_layers(model)))[1]
    assert torch.equal(tensors["base_model.model.bert.encoder.layer.0.attention.self.query.lora_A.weight"],
                       layer.lora_A().detach())  # LoRA-SP exports its full, assembled A


def test_saved_files_are_safetensors_with_sp_buffers(tmp_path):
    model = apply_adapter(tiny_bert(), LoRASPConfig(rank=4, target_modules=["query"], mask_mode="row"))
    save_adapter(model, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["loracle_adapter.json", "loracle_adapter.safetensors"]
    keys = load_file(tmp_path / "loracle_adapter.safetensors")
    prefix = "bert.encoder.layer.0.attention.self.query."
    for name in ("lora_A_trainable", "lora_A_frozen", "lora_A_index", "lora_B_trainable", "lora_B_frozen",
                 "lora_B_index"):
        assert prefix + name in keys
    assert not any("base_layer" in k for k in keys)


def test_load_into_wrong_model_names_key_and_folder(tmp_path):
    model = apply_adapter(tiny_bert(num_labels=2), make_config("lora", "bert"))
    save_adapter(model, tmp_path)
    other = tiny_bert(num_labels=3)
    with pytest.raises(ValueError, match=r"classifier.weight.*shape \(2, 32\).*expects \(3, 32\)") as err:
        load_adapter(other, tmp_path)
    assert str(tmp_path) in str(err.value)
    assert not list(adapter_layers(other))  # left clean
    with pytest.raises(ValueError, match="modules_to_save entry 'classifier' matches no module"):
        load_adapter(build("llama"), tmp_path)  # its head is called 'score'
    save_adapter(apply_adapter(tiny_bert(), make_config("lora", "bert", modules_to_save=[])), tmp_path / "all")
    with pytest.raises(ValueError, match=r"missing keys \['model.layers.0.*unexpected keys \['bert.encoder"):
        load_adapter(build("llama"), tmp_path / "all")  # targets every linear layer: applies, keys differ
    with pytest.raises(FileNotFoundError, match="loracle_adapter.json"):
        load_adapter(tiny_bert(), tmp_path / "nothing")


@pytest.mark.parametrize("model_kind", ["bert", "llama"])
def test_export_peft_folds_a_temperature_and_prior_offset_into_the_head(model_kind, token_batch, tmp_path):
    """The PEFT model's logits are the loracle model's divided by the temperature, plus the offset (BERT's
    classifier has a bias to carry it; Llama's ``score`` has none, so it takes the temperature alone and refuses an
    offset); the loracle model itself is left unchanged."""
    peft = pytest.importorskip("peft")
    model = apply_adapter(build(model_kind), make_config("lora", model_kind))
    randomize(model)
    before = logits(model, token_batch)
    offset = torch.tensor([0.7, -0.3]) if model_kind == "bert" else None
    export_peft(model, tmp_path, temperature=2.5, prior_offset=offset)
    torch.testing.assert_close(logits(model, token_batch), before)
    loaded = peft.PeftModel.from_pretrained(build(model_kind), tmp_path).eval()
    expected = before / 2.5 + (0.0 if offset is None else offset)
    torch.testing.assert_close(logits(loaded, token_batch), expected, rtol=1e-4, atol=1e-5)
    if model_kind == "llama":
        with pytest.raises(ValueError, match="'score' has no bias to carry the class-prior offset"):
            export_peft(model, tmp_path / "o", prior_offset=torch.zeros(2))


def test_export_peft_calibration_errors(tmp_path):
    model = apply_adapter(tiny_bert(), make_config("lora", "bert"))
    with pytest.raises(ValueError, match="temperature must be a positive number, got 0"):
        export_peft(model, tmp_path, temperature=0)
    with pytest.raises(ValueError, match="prior_offset has 3 values; 'classifier' has 2 outputs"):
        export_peft(model, tmp_path, prior_offset=torch.zeros(3))
    headless = apply_adapter(tiny_bert(), make_config("lora", "bert", modules_to_save=[]))
    with pytest.raises(ValueError, match="no linear layer in the trained head"):
        export_peft(headless, tmp_path, temperature=2.0)


def test_import_peft_rejects_unsupported(tmp_path):
    model = apply_adapter(tiny_bert(), LoRAConfig(rank=4, target_modules=["query"]))
    export_peft(model, tmp_path)
    cfg = json.loads((tmp_path / "adapter_config.json").read_text())
    cfg["use_dora"] = True
    (tmp_path / "adapter_config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="use_dora=True"):
        import_peft(tiny_bert(), tmp_path)


# -- untrusted adapter folders (issue 7) -----------------------------------------------------------------------------


def saved_folder(tmp_path, **config_changes):
    """A tiny-BERT LoRA adapter saved to ``tmp_path/"adapter"``, its JSON then edited with ``config_changes``."""
    folder = tmp_path / "adapter"
    save_adapter(apply_adapter(tiny_bert(), make_config("lora", "bert")), folder)
    info = json.loads((folder / "loracle_adapter.json").read_text())
    info["config"].update(config_changes)
    (folder / "loracle_adapter.json").write_text(json.dumps(info))
    return folder


@pytest.mark.parametrize(("pattern", "message"), [
    # Before: re.fullmatch backtracked exponentially on a 40-character module name and the process hung.
    ("(.*.*)*X", r"refused: a repeated group contains another repeat or an alternative \(a nested quantifier"),
    # 8 repeats, each with at most 43 + 1 iteration counts on the longest name (43 characters), over 14 names
    (".*.*.*.*.*.*.*.*X", r"refused: matching it against the 14 layer names could take up to 2\.0e\+14 backtracking "
                          r"steps"),
    ("(.)\\1", r"refused: back-references are not supported"),
    ("(", r"is not a valid regular expression: missing \)"),
])
def test_regex_target_with_unbounded_matching_time_is_refused(tmp_path, pattern, message):
    folder = saved_folder(tmp_path, target_modules=pattern)
    model = tiny_bert()
    with pytest.raises(AdapterFileError, match=message) as err:
        load_adapter(model, folder)
    assert str(err.value).startswith(str(folder / "loracle_adapter.json"))
    assert not list(adapter_layers(model))


def test_safe_regex_targets_still_match():
    model = apply_adapter(tiny_bert(), LoRAConfig(rank=2, target_modules=r".*\.(query|value)"))
    assert sorted({n.rsplit(".", 1)[-1] for n, _ in adapter_layers(model)}) == ["query", "value"]
    model = apply_adapter(tiny_bert(), LoRAConfig(rank=2, target_modules=r"(?!.*pooler).*layer\.1\..*\.dense"))
    assert [n for n, _ in adapter_layers(model)] == [
        "bert.encoder.layer.1.attention.output.dense", "bert.encoder.layer.1.intermediate.dense",
        "bert.encoder.layer.1.output.dense"]


def test_rank_above_layer_dimensions_is_refused_before_allocation(tmp_path):
    # Before: rank 2000000 allocated A (2e6 x 32) and B (32 x 2e6) for every layer, exhausting memory.
    folder = saved_folder(tmp_path, rank=2_000_000)
    model = tiny_bert()
    with pytest.raises(AdapterFileError) as err:
        load_adapter(model, folder)
    assert str(err.value) == (
        f"{folder / 'loracle_adapter.json'}: rank 2000000 exceeds min(in_features, out_features) of layer "
        "'bert.encoder.layer.0.attention.self.query' (in_features 32, out_features 32) and 12 more layer(s); use "
        "rank <= 32, or leave such layers out of target_modules")
    assert not list(adapter_layers(model))
    with pytest.raises(ValueError, match=r"rank 33 exceeds min\(in_features, out_features\) of this layer"):
        LoRAConfig.layer_class(torch.nn.Linear(32, 64), LoRAConfig(rank=33), torch.Generator())


@pytest.mark.parametrize(("text", "message"), [
    ('{"format_version": 1, "config": null, "extra": {}}',
     r"loracle_adapter.json: field 'config' is null; expected the adapter config, a JSON object"),
    ('{"format_version": 1, "config": {"method": "lora", "rank": 4', r"loracle_adapter.json: malformed JSON "
                                                                      r"\(Expecting .* at line 1, column \d+\)"),
    ("[1, 2]", r"loracle_adapter.json: expected a JSON object with 'config'"),
    ('{"format_version": 7, "config": {"method": "lora"}}', r"format_version 7 is not one this loracle reads"),
    ('{"config": {"method": "lora", "target_modules": 5}}',
     r"loracle_adapter.json: invalid LoRAConfig:\n  - target_modules must be a list of layer names, a regex"),
    ('{"config": {"method": "lora", "seed": "x", "use_rslora": 1, "modules_to_save": null}}',
     r"(?s)modules_to_save must be a list.*use_rslora must be true or false.*seed must be an integer"),
    ('{"config": {"method": "dora"}}', r"loracle_adapter.json: unknown adapter method 'dora'; registered methods"),
])
def test_malformed_adapter_json_names_the_file(tmp_path, text, message):
    folder = saved_folder(tmp_path)
    (folder / "loracle_adapter.json").write_text(text)
    with pytest.raises(AdapterFileError, match=message) as err:
        load_adapter(tiny_bert(), folder)
    assert str(folder / "loracle_adapter.json") in str(err.value)


def test_oversized_adapter_json_is_not_parsed(tmp_path):
    folder = saved_folder(tmp_path)
    with open(folder / "loracle_adapter.json", "r+b") as handle:
        handle.truncate(MAX_CONFIG_BYTES + 1)  # sparse: no 16 MiB written
    with pytest.raises(AdapterFileError, match=rf"loracle_adapter.json is {MAX_CONFIG_BYTES + 1} bytes; an adapter "
                                               "config is a few kB"):
        read_adapter_info(folder)


@pytest.mark.parametrize("damage", ["truncate", "garble"])
def test_damaged_safetensors_names_the_file(tmp_path, damage):
    folder = saved_folder(tmp_path)
    path = folder / "loracle_adapter.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"\x00" * 64 + data[64:])
    model = tiny_bert()
    with pytest.raises(AdapterFileError) as err:
        load_adapter(model, folder)
    assert str(err.value).startswith(f"{path}: not a readable safetensors file (Error while deserializing header")
    assert str(err.value).endswith("it is damaged or truncated: save the adapter again")
    assert not list(adapter_layers(model))


def test_failed_save_names_the_file_and_keeps_the_previous_adapter(tmp_path, monkeypatch, token_batch):
    import errno

    import safetensors.torch

    model = apply_adapter(tiny_bert(), make_config("lora", "bert"))
    randomize(model)
    save_adapter(model, tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def disk_full(tensors, filename, metadata=None):
        with open(filename, "wb") as handle:
            handle.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", disk_full)
    randomize(model, seed=2)
    with pytest.raises(OSError) as err:
        save_adapter(model, tmp_path)
    assert err.value.errno == errno.ENOSPC and err.value.filename == str(tmp_path / "loracle_adapter.safetensors")
    assert str(err.value) == f"[Errno 28] No space left on device: '{tmp_path / 'loracle_adapter.safetensors'}'"
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # no temporary file left, old one whole
    monkeypatch.undo()
    restored = load_adapter(tiny_bert(), tmp_path)
    randomize(model, seed=1)
    torch.testing.assert_close(logits(restored, token_batch), logits(model, token_batch))


def test_long_target_lists_give_a_short_message(tmp_path):
    # 200,000 names from an untrusted file (matched through a set, not 200,000 x every layer name): the message
    # shows five of the unmatched ones, not all of them.
    folder = saved_folder(tmp_path, target_modules=["query"] + [f"x{i}" for i in range(200_000)])
    with pytest.raises(AdapterFileError) as err:
        load_adapter(tiny_bert(), folder)
    assert (f"{folder / 'loracle_adapter.json'}: target_modules ['x0', 'x1', 'x2', 'x3', 'x4'] and 199995 more match "
            "no linear layer of BertForSequenceClassification; its linear layer names are") in str(err.value)
    assert len(str(err.value)) < 500
