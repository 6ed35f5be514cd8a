"""Configuration of the open-r1-jax "sandwich" decoder for Hugging Face transformers (remote code).

Written into every export by ``python -m open_r1_jax.export``; self-contained (imports only
transformers). The keys are those of the ``model`` section of an open-r1-jax config (``d_model``,
``n_layers``, ``attention``, ``drn``, ``moe``, ...); ``attribute_map`` gives the standard names
(``hidden_size``, ``num_hidden_layers``, ...) that tools such as lm-eval and peft read.
"""

from transformers import PretrainedConfig


class SandwichConfig(PretrainedConfig):
    model_type = "open_r1_sandwich"
    keys_to_ignore_at_inference = ["cache", "past_key_values"]
    attribute_map = {
        "hidden_size": "d_model",
        "num_hidden_layers": "n_layers",
        "num_attention_heads": "n_heads",
        "num_key_value_heads": "n_kv_heads",
        "max_position_embeddings": "max_seq_len",
        "rms_norm_eps": "norm_eps",
    }

    def __init__(
        self,
        vocab_size=272,
        d_model=64,
        n_layers=4,
        drn_layers=1,
        n_heads=4,
        n_kv_heads=2,
        head_dim=16,
        max_seq_len=256,
        norm_eps=1e-6,
        tie_embeddings=False,
        init_std=0.02,
        attention=None,
        drn=None,
        moe=None,
        use_cache=True,
        **kwargs,
    ):
        self.vocab_size = vocab_size
        self.d_model = d_model
        self.n_layers = n_layers
        self.drn_layers = drn_layers
        self.n_heads = n_heads
        self.n_kv_heads = n_kv_heads
        self.head_dim = head_dim
        self.max_seq_len = max_seq_len
        self.norm_eps = norm_eps
        self.tie_embeddings = tie_embeddings
        self.init_std = init_std
        self.use_cache = use_cache  # generate() keeps keys and values of earlier tokens
        # Sub-sections as plain dicts (the JSON of the open-r1-jax config); defaults are the project's.
        self.attention = {"kind": "full", "lsh_layers": [], "rope_theta": 10000.0, "rope_scaling": "none",
                          "rope_factor": 1.0, **(attention or {})}  # fmt: skip
        self.drn = {"n_experts": 4, "expert_ffn_dim": 64, **(drn or {})}
        self.moe = {"n_experts": 8, "top_k": 2, "expert_ffn_dim": 64, "n_shared_experts": 0, "router": "softmax",
                    "renormalize": True, "route_scale": 1.0, **(moe or {})}  # fmt: skip
        # The LM head is tied inside the model (no lm_head weight when tie_embeddings): nothing for transformers to tie.
        kwargs["tie_word_embeddings"] = False
        super().__init__(**kwargs)
