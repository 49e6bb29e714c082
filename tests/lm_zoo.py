"""A zoo of mlx-lm architectures built from tiny configs with random float32 weights.

Test support for generation and stateful programs: each entry is a real mlx-lm ``Model`` class
(``mlx_lm.models.<arch>``) with a small config (hidden size 32-64, 2-3 layers, vocabulary 128),
weights drawn after ``mx.random.seed`` so every build of one entry is identical. A prefill of 16
tokens takes milliseconds on a CPU. Nothing is downloaded: prompts are token ids.

Imports mlx and mlx_lm only (no mlxtriton), so any layer's tests may use it.
"""

from __future__ import annotations

import dataclasses
import zlib
from typing import Any, Callable, Iterator, Optional

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_map
from mlx_lm.generate import generate_step
from mlx_lm.models import cache as lm_cache
from mlx_lm.utils import _get_classes

VOCAB = 128

# What sets an architecture apart for a cache: a sliding-window attention layer (RotatingKVCache),
# a recurrent state (ArraysCache), both attention and recurrent layers, routed experts.
SLIDING, SSM, HYBRID, MOE = "sliding", "ssm", "hybrid", "moe"


@dataclasses.dataclass(frozen=True)
class Arch:
    """One zoo entry: a name, the mlx-lm config it is built from, what kind of model it is and
    the scale of its random weights (see ``build_arch``)."""

    name: str
    config: dict
    kinds: frozenset = frozenset()
    gain: float = 2.0


def config(model_type: str, **overrides) -> dict:
    """A llama-like base config (hidden 64, 2 layers, 4 heads over 2 kv heads) with overrides."""
    base = dict(
        model_type=model_type, hidden_size=64, num_hidden_layers=2, intermediate_size=128,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, rms_norm_eps=1e-5,
        vocab_size=VOCAB, max_position_embeddings=4096, rope_theta=10000.0,
        tie_word_embeddings=False,
    )
    base.update(overrides)
    return base


# DeepSeek-V2-Lite's rope scaling (its config.json): yarn, factor 40 over 4096 positions.
_YARN = dict(type="yarn", factor=40.0, original_max_position_embeddings=4096, beta_fast=32,
             beta_slow=1, mscale=0.707, mscale_all_dim=0.707)

ARCHS: tuple[Arch, ...] = (
    Arch("llama", config("llama")),
    Arch("mistral", config("mistral", sliding_window=32,
                         layer_types=["sliding_attention", "full_attention"]), frozenset({SLIDING})),
    Arch("qwen2", config("qwen2")),
    Arch("qwen3", config("qwen3")),
    Arch("gemma", config("gemma")),
    # At gain 2 gemma2's logits saturate its final soft cap (tanh) and greedy decoding ties.
    Arch("gemma2", config("gemma2", query_pre_attn_scalar=16.0), gain=1.0),
    Arch("gemma3_text", config("gemma3_text", sliding_window=32, sliding_window_pattern=2,
                             query_pre_attn_scalar=16.0), frozenset({SLIDING})),
    Arch("phi3", config("phi3", original_max_position_embeddings=4096)),
    Arch("starcoder2", config("starcoder2", norm_epsilon=1e-5)),
    Arch("cohere", config("cohere", layer_norm_eps=1e-5)),
    Arch("cohere2", config("cohere2", layer_norm_eps=1e-5, sliding_window=32,
                         sliding_window_pattern=2), frozenset({SLIDING})),
    Arch("olmo2", config("olmo2")),
    Arch("internlm2", config("internlm2")),
    Arch("stablelm", config("stablelm", use_qkv_bias=True, partial_rotary_factor=0.5,
                          layer_norm_eps=1e-5)),
    Arch("gpt2", dict(model_type="gpt2", n_ctx=1024, n_embd=64, n_head=4, n_layer=2,
                      n_positions=1024, layer_norm_epsilon=1e-5, vocab_size=VOCAB)),
    Arch("gpt_neox", config("gpt_neox", num_key_value_heads=4, layer_norm_eps=1e-5,
                          rotary_emb_base=10000, rotary_pct=0.5)),
    Arch("phi", config("phi", num_key_value_heads=4, layer_norm_eps=1e-5, partial_rotary_factor=0.5)),
    Arch("mixtral", config("mixtral", num_local_experts=4, num_experts_per_tok=2), frozenset({MOE})),
    Arch("qwen2_moe", config("qwen2_moe", num_experts=4, num_experts_per_tok=2,
                           moe_intermediate_size=32, shared_expert_intermediate_size=64),
         frozenset({MOE})),
    Arch("qwen3_moe", config("qwen3_moe", num_experts=4, num_experts_per_tok=2, decoder_sparse_step=1,
                           mlp_only_layers=[], moe_intermediate_size=32, norm_topk_prob=True),
         frozenset({MOE})),
    Arch("olmoe", config("olmoe", num_experts=4, num_experts_per_tok=2), frozenset({MOE})),
    Arch("deepseek_v2", config("deepseek_v2", num_key_value_heads=4, moe_intermediate_size=32,
                             n_shared_experts=1, n_routed_experts=4, num_experts_per_tok=2,
                             kv_lora_rank=16, q_lora_rank=32, qk_rope_head_dim=8, v_head_dim=16,
                             qk_nope_head_dim=16, topk_method="greedy", first_k_dense_replace=1,
                             rope_scaling=_YARN),
         frozenset({MOE})),
    Arch("deepseek_v3", config("deepseek_v3", num_key_value_heads=4, moe_intermediate_size=32,
                             n_shared_experts=1, n_routed_experts=4, num_experts_per_tok=2,
                             kv_lora_rank=16, q_lora_rank=32, qk_rope_head_dim=8, v_head_dim=16,
                             qk_nope_head_dim=16, n_group=2, topk_group=1, first_k_dense_replace=1),
         frozenset({MOE})),
    Arch("granite", config("granite", logits_scaling=4.0, attention_multiplier=0.25,
                         embedding_multiplier=2.0, residual_multiplier=0.5, attention_bias=False,
                         mlp_bias=False)),
    Arch("exaone", config("exaone", num_layers=2, layer_norm_epsilon=1e-5)),
    Arch("minicpm", config("minicpm", dim_model_base=32, scale_depth=1.4, scale_emb=2.0)),
    Arch("helium", config("helium", attention_bias=False, mlp_bias=False)),
    Arch("glm4", config("glm4", attention_bias=True, partial_rotary_factor=0.5)),
    Arch("olmo3", config("olmo3", sliding_window=32,
                       layer_types=["sliding_attention", "full_attention"]), frozenset({SLIDING})),
    Arch("exaone4", config("exaone4", sliding_window=32, sliding_window_pattern="LG",
                         rope_scaling=None), frozenset({SLIDING})),
    Arch("gpt_oss", config("gpt_oss", num_local_experts=4, num_experts_per_tok=2, sliding_window=32,
                         layer_types=["sliding_attention", "full_attention"]),
         frozenset({SLIDING, MOE})),
    Arch("mamba", dict(model_type="mamba", vocab_size=VOCAB, hidden_size=32, intermediate_size=64,
                       state_size=8, num_hidden_layers=2, conv_kernel=4, use_bias=False,
                       use_conv_bias=True, time_step_rank=4), frozenset({SSM})),
    Arch("mamba2", dict(model_type="mamba2", num_heads=4, head_dim=16, vocab_size=VOCAB,
                        hidden_size=32, intermediate_size=64, state_size=8, num_hidden_layers=2,
                        layer_norm_epsilon=1e-5, conv_kernel=4, n_groups=1, use_bias=False,
                        use_conv_bias=True, tie_word_embeddings=False,
                        time_step_limit=(0.0, float("inf")), time_step_rank="auto"),
         frozenset({SSM})),
    Arch("lfm2", dict(model_type="lfm2", vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                      norm_eps=1e-5, conv_bias=False, conv_L_cache=3, block_dim=64,
                      block_multiple_of=16, block_ffn_dim_multiplier=1.0,
                      block_auto_adjust_ff_dim=False, block_ff_dim=128,
                      layer_types=["conv", "full_attention"]),
         frozenset({SSM, HYBRID})),
    Arch("nemotron_h", dict(model_type="nemotron_h", vocab_size=VOCAB, hidden_size=64,
                            intermediate_size=128, max_position_embeddings=4096,
                            num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                            attention_bias=False, mamba_num_heads=4, mamba_head_dim=16,
                            mamba_proj_bias=False, ssm_state_size=8, conv_kernel=4, n_groups=1,
                            mlp_bias=False, layer_norm_epsilon=1e-5, use_bias=False,
                            use_conv_bias=True, hybrid_override_pattern=["M", "*", "-"]),
         frozenset({SSM, HYBRID})),
    Arch("recurrent_gemma", dict(model_type="recurrent_gemma", attention_bias=False, conv1d_width=4,
                                 hidden_size=64, intermediate_size=128, logits_soft_cap=30.0,
                                 num_attention_heads=4, num_hidden_layers=2, num_key_value_heads=1,
                                 rms_norm_eps=1e-6, rope_theta=10000.0, attention_window_size=32,
                                 vocab_size=VOCAB, block_types=["recurrent", "attention"]),
         frozenset({SLIDING, SSM, HYBRID})),
    Arch("qwen3_next", config("qwen3_next", linear_num_value_heads=4, linear_num_key_heads=2,
                            linear_key_head_dim=16, linear_value_head_dim=16,
                            linear_conv_kernel_dim=4, num_experts=4, num_experts_per_tok=2,
                            decoder_sparse_step=1, shared_expert_intermediate_size=32,
                            mlp_only_layers=[], moe_intermediate_size=32, partial_rotary_factor=0.5,
                            full_attention_interval=2),
         frozenset({SSM, HYBRID, MOE})),
    Arch("falcon_h1", dict(model_type="falcon_h1", hidden_size=64, intermediate_size=128,
                           num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                           head_dim=16, mamba_d_conv=4, mamba_d_head=16, mamba_d_ssm=64,
                           mamba_d_state=8, mamba_expand=1, mamba_n_groups=1, mamba_n_heads=4,
                           mamba_chunk_size=16, vocab_size=VOCAB, rope_theta=10000.0,
                           max_position_embeddings=4096),
         frozenset({SSM, HYBRID})),
)

BY_NAME = {a.name: a for a in ARCHS}
NAMES = tuple(a.name for a in ARCHS)


def build(name: str, dtype: mx.Dtype = mx.float32) -> nn.Module:
    """The zoo entry ``name`` as an mlx-lm model (see ``build_arch``)."""
    return build_arch(BY_NAME[name], dtype)


def build_arch(arch: Arch, dtype: mx.Dtype = mx.float32) -> nn.Module:
    """``arch`` as an mlx-lm model with weights drawn from a seed fixed by its name.

    Every floating-point parameter of two or more dimensions is redrawn from a normal
    distribution with standard deviation ``gain / sqrt(last dimension)``; the rest (norm scales,
    biases, SSM decay and step parameters) keep mlx-lm's initialisation. With mlx.nn's default
    initialisation many of these models repeat one token whatever the context (a tied embedding
    dominates the residual stream); at gain 2 greedy continuations depend on the context, which
    is what a cache comparison needs.
    """
    model_class, args_class = _get_classes(arch.config)
    mx.random.seed(zlib.crc32(arch.name.encode()))
    model = model_class(args_class.from_dict(arch.config))
    model.update(tree_map(
        lambda p: (mx.random.normal(p.shape) * (arch.gain / p.shape[-1] ** 0.5)
                   if p.ndim >= 2 and mx.issubdtype(p.dtype, mx.floating) else p),
        model.parameters()))
    if dtype != mx.float32:
        model.set_dtype(dtype)
    mx.eval(model.parameters())
    model.eval()
    return model


def models(names=NAMES) -> Iterator[tuple[str, nn.Module]]:
    """(name, model) for each zoo entry, built one at a time."""
    for name in names:
        yield name, build(name)


def prompt(length: int, seed: int = 0) -> mx.array:
    """``length`` token ids drawn uniformly from the zoo's vocabulary."""
    return mx.random.randint(0, VOCAB, (length,), key=mx.random.key(seed)).astype(mx.int32)


def argmax_sampler(logprobs: mx.array) -> mx.array:
    return mx.argmax(logprobs, axis=-1)


def greedy(model: nn.Module, prompt_ids: mx.array, max_tokens: int,
           prompt_cache: Optional[list[Any]] = None, **kwargs) -> list[int]:
    """Plain mlx-lm greedy generation: ``generate_step`` with an argmax sampler.

    ``prompt_cache`` defaults to mlx-lm's own (``make_prompt_cache(model)``); other keyword
    arguments go to ``generate_step``.
    """
    if prompt_cache is None:
        prompt_cache = lm_cache.make_prompt_cache(model)
    steps = generate_step(prompt_ids, model, max_tokens=max_tokens, sampler=argmax_sampler,
                          prompt_cache=prompt_cache, **kwargs)
    return [token for token, _ in steps]


def cache_factory(model: nn.Module) -> Callable[[], list[Any]]:
    """mlx-lm's cache for ``model``, as a zero-argument factory."""
    return lambda: lm_cache.make_prompt_cache(model)


class CharTokenizer:
    """A tokenizer without files: token ``i`` is the character U+0100 + i (printable, distinct).

    Enough of Hugging Face's tokenizer interface for ``mlx_lm.tokenizer_utils.TokenizerWrapper``,
    so ``mlx_lm.generate`` / ``stream_generate`` run on the zoo without a download.
    """

    BASE = 0x100
    eos_token_id = None
    bos_token = None
    chat_template = None

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return [ord(c) - self.BASE for c in text if 0 <= ord(c) - self.BASE < VOCAB]

    def decode(self, ids, **kwargs) -> str:
        return "".join(chr(self.BASE + int(i)) for i in ids)

    def get_vocab(self) -> dict[str, int]:
        return {chr(self.BASE + i): i for i in range(VOCAB)}

    def apply_chat_template(self, *args, **kwargs):  # TokenizerWrapper inspects its signature
        raise NotImplementedError("CharTokenizer has no chat template")


def tokenizer():
    """The zoo's ``CharTokenizer`` wrapped for mlx-lm's ``generate`` / ``stream_generate``."""
    from mlx_lm.tokenizer_utils import TokenizerWrapper

    return TokenizerWrapper(CharTokenizer())


def training_step(model: nn.Module, optimizer) -> Callable[[mx.array, mx.array], mx.array]:
    """mlx-lm's fine-tuning step as its tuner writes it: ``default_loss`` over (batch, lengths),
    its gradient, the optimizer's update; returns the loss."""
    from mlx_lm.tuner.trainer import default_loss

    loss_and_grad = nn.value_and_grad(model, default_loss)

    def step(batch: mx.array, lengths: mx.array) -> mx.array:
        (loss, _), grads = loss_and_grad(model, batch, lengths)
        optimizer.update(model, grads)
        return loss

    return step
