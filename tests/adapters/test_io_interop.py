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


def test_import_peft_rejects_unsupported(tmp_path):
    model = apply_adapter(tiny_bert(), LoRAConfig(rank=4, target_modules=["query"]))
    export_peft(model, tmp_path)
    cfg = json.loads((tmp_path / "adapter_config.json").read_text())
    cfg["use_dora"] = True
    (tmp_path / "adapter_config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="use_dora=True"):
        import_peft(tiny_bert(), tmp_path)
