"""The zoo's Hugging Face models: tiny ones built from configs (random init, never a download),
each checked with its own ``output.loss``, with the sites where bugs are planted.

Imported only by tests that first ran ``pytest.importorskip("transformers")``.
"""

from __future__ import annotations

from typing import Any

import torch
import transformers as tf
from torch import nn

from tests.zoo import Built, Case, digits

tf.logging.set_verbosity_error()

VOCAB = 50
# Small enough to check in seconds, large enough for every part to be there (two layers,
# two heads, grouped-query attention where the architecture has it).
_LM: dict[str, Any] = {"vocab_size": VOCAB, "num_hidden_layers": 2, "num_attention_heads": 2}
_DECODER: dict[str, Any] = {
    **_LM, "hidden_size": 16, "intermediate_size": 32, "num_key_value_heads": 1,
    "max_position_embeddings": 32, "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2,
}  # fmt: skip


def _ids(seed: int, shape: tuple[int, int] = (2, 8)) -> torch.Tensor:
    return torch.randint(3, VOCAB, shape, generator=torch.Generator().manual_seed(seed))


def _causal_lm_loss(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    return model(input_ids=ids, labels=ids).loss


def _causal(model_class: type, config: Any) -> Any:
    def build(seed: int) -> Built:
        torch.manual_seed(seed)
        return model_class(config).train(), _causal_lm_loss, _ids(seed)

    return build


def _t5(seed: int) -> Built:
    torch.manual_seed(seed)
    config = tf.T5Config(
        vocab_size=VOCAB, d_model=16, d_kv=8, d_ff=32, num_layers=2, num_heads=2,
        decoder_start_token_id=0, pad_token_id=0, eos_token_id=1,
    )  # fmt: skip
    batch = {"input_ids": _ids(seed), "labels": _ids(seed + 100, (2, 5))}
    return tf.T5ForConditionalGeneration(config).train(), _keywords_loss, batch


def _bert(seed: int) -> Built:
    torch.manual_seed(seed)
    config = tf.BertConfig(
        **_LM, hidden_size=16, intermediate_size=32, max_position_embeddings=32, num_labels=3
    )
    ids = _ids(seed, (3, 8))
    mask = torch.ones_like(ids)
    mask[1, 5:] = mask[2, 3:] = 0  # padded sequences
    batch = {"input_ids": ids * mask, "attention_mask": mask, "labels": torch.tensor([0, 2, 1])}
    return tf.BertForSequenceClassification(config).train(), _keywords_loss, batch


def _vit(seed: int) -> Built:
    torch.manual_seed(seed)
    config = tf.ViTConfig(
        image_size=8, patch_size=4, num_channels=1, hidden_size=16, num_hidden_layers=2,
        num_attention_heads=2, intermediate_size=32, num_labels=10,
    )  # fmt: skip
    images, labels = digits(4, seed)
    batch = {"pixel_values": images, "labels": labels}
    return tf.ViTForImageClassification(config).train(), _keywords_loss, batch


def _keywords_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return model(**batch).loss


# Sampled: a full check of ~6-11k components takes tens of seconds; 300 components spread over
# every tensor reach every planted bug.
_SAMPLE = {"sample": 300}

HF_CASES: list[Case] = [
    Case(
        "GPT-2",
        _causal(tf.GPT2LMHeadModel, tf.GPT2Config(
            vocab_size=VOCAB, n_positions=16, n_embd=16, n_layer=2, n_head=2,
            bos_token_id=1, eos_token_id=2)),
        {"missing_term": "transformer.h.0.mlp.act", "factor": "transformer.h.1.attn",
         "transposed": "transformer.h.0.attn.c_proj.weight", "sign": "transformer.h.1.ln_2",
         "zeroed": "transformer.h.0.mlp"},
        _SAMPLE, slow=True,
    ),
    Case(
        "Llama",
        _causal(tf.LlamaForCausalLM, tf.LlamaConfig(**_DECODER)),
        {"missing_term": "model.layers.0.mlp.act_fn", "factor": "model.layers.1.self_attn",
         "transposed": "model.layers.0.self_attn.o_proj.weight",
         "sign": "model.layers.1.post_attention_layernorm",
         "zeroed": "model.layers.0.mlp.down_proj"},
        _SAMPLE, slow=True,
    ),
    Case(
        "Gemma",  # its RMSNorm casts the parameter itself: (1 + weight.float())
        _causal(tf.GemmaForCausalLM, tf.GemmaConfig(**_DECODER, head_dim=8)),
        {"missing_term": "model.layers.1.mlp.act_fn", "factor": "model.layers.0.input_layernorm",
         "transposed": "model.layers.1.self_attn.o_proj.weight"},
        _SAMPLE, slow=True,
    ),
    Case(
        "T5",
        _t5,
        {"factor": "encoder.block.0.layer.0", "sign": "decoder.block.1.layer.2.DenseReluDense.wo",
         "transposed": "decoder.block.0.layer.0.SelfAttention.o.weight",
         "zeroed": "encoder.final_layer_norm"},
        _SAMPLE, slow=True,
    ),
    Case(
        "BERT",
        _bert,
        {"missing_term": "bert.encoder.layer.0.intermediate.intermediate_act_fn",
         "factor": "bert.encoder.layer.1.attention.output.dense",
         "transposed": "bert.encoder.layer.0.attention.self.query.weight", "sign": "bert.pooler"},
        _SAMPLE, unjudged=("*.attention.self.key.bias",), slow=True,
    ),
    Case(
        "ViT",
        _vit,
        {"missing_term": "vit.layers.0.mlp.activation_fn",
         "transposed": "vit.layers.1.attention.o_proj.weight",
         "factor": "vit.embeddings.patch_embeddings", "zeroed": "classifier"},
        _SAMPLE, unjudged=("*.attention.k_proj.bias",), slow=True,
    ),
]  # fmt: skip
