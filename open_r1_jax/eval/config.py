"""Settings of ``python -m open_r1_jax.eval`` (one section per task; ``key=value`` overrides, e.g.
``mc.shots=5 code.n=10``). Defaults are the embedded suite: it runs offline in minutes on 2 CPU cores."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class PplConfig:
    files: tuple[str, ...] = ()  # text / JSONL files or folders; empty = the embedded corpus's held-out files
    text_key: str = "text"  # JSONL field holding the document
    seq_len: int = 0  # tokens per scored window; 0 = model.max_seq_len
    max_tokens: int = 131072  # scored tokens at most
    batch: int = 8  # windows per forward pass


@dataclass(frozen=True)
class MCConfig:
    file: str = ""  # MMLU-layout JSONL, MMLU CSV file or folder of *_test.csv; empty = built from held-out text
    dev_file: str = ""  # few-shot examples (same layouts; CSV: folder of *_dev.csv); needed for shots > 0
    n: int = 100  # questions of the embedded default
    shots: int = 0  # k-shot: the first k dev examples of the question's subject (else of the dev file)
    max_bad_fraction: float = 0.01  # malformed lines tolerated (share of lines); above it the task fails
    batch: int = 16  # sequences per forward pass


@dataclass(frozen=True)
class LatencyConfig:
    prompt_tokens: int = 1024  # the seed's "inference latency at 1024 tokens"
    new_tokens: int = 32  # generated tokens per repeat (time per output token)
    repeats: int = 10  # timed repeats after one warm-up (compilation excluded)


@dataclass(frozen=True)
class CodeConfig:
    n: int = 1  # samples per problem (pass@k needs n >= k)
    temperature: float = 0.8  # sampling temperature when n > 1 (n == 1 is greedy)
    top_p: float = 0.95
    max_new_tokens: int = 256
    problems: int = 0  # the first N HumanEval problems; 0 = all 164
    timeout: float = 3.0  # seconds per executed completion
    batch: int = 32  # prompts per generation call
    workers: int = 2  # completions executed in parallel


@dataclass(frozen=True)
class LongConfig:
    tokens: int = 20480  # length of the scored held-out text
    bucket: int = 1024  # position bucket of the loss
    chunk: int = 1024  # tokens per call of the cached full-attention forward
    generate_tokens: int = 20480  # length of the generation (repetition statistics)
    temperature: float = 0.8
    top_p: float = 0.95


@dataclass(frozen=True)
class ResourcesConfig:
    batches: tuple[int, ...] = (1, 8, 32)  # generation throughput at these batch sizes
    prompt_tokens: int = 128
    new_tokens: int = 64
    device_watts: float = 0.0  # power per device for the energy estimate (0 = 15 W per CPU core / 400 W GPU)
    grid_kg_per_kwh: float = 0.4  # grid carbon intensity


@dataclass(frozen=True)
class CompleteConfig:
    file: str = ""  # prompt-completion / chat JSONL (as sft reads it); empty = the embedded demo's held-out examples
    n: int = 0  # examples at most (0 = all)
    max_new_tokens: int = 256
    batch: int = 16  # prompts per generation call
    max_bad_fraction: float = 0.01  # malformed lines tolerated (share of lines)


@dataclass(frozen=True)
class ArithConfig:
    file: str = ""  # JSONL of {"prompt", "answer"} (as grpo reads it); empty = the held-out split of data/arith.py
    n: int = 200  # problems (of the demo; at most, of a file; 0 = all of a file)
    max_new_tokens: int = 72
    samples: int = 8  # sampled completions per problem for pass@k (0 = greedy only)
    k: int = 8  # pass@k's k (<= samples), beside pass@1
    temperature: float = 1.0
    batch: int = 50  # problems per generation call


@dataclass(frozen=True)
class MediaQAConfig:
    file: str = ""  # JSONL of {"image" | "audio": path, "question", "answer"}; empty = the demo's held-out media
    n: int = 50  # questions per question type of the demo (at most, of a file; 0 = all of a file)
    max_new_tokens: int = 12  # answers are a few words
    batch: int = 64  # questions per generation call
    max_bad_fraction: float = 0.01  # malformed lines and bad media files tolerated (share of lines)


@dataclass(frozen=True)
class EvalConfig:
    ppl: PplConfig = field(default_factory=PplConfig)
    mc: MCConfig = field(default_factory=MCConfig)
    latency: LatencyConfig = field(default_factory=LatencyConfig)
    code: CodeConfig = field(default_factory=CodeConfig)
    long: LongConfig = field(default_factory=LongConfig)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    complete: CompleteConfig = field(default_factory=CompleteConfig)
    arith: ArithConfig = field(default_factory=ArithConfig)
    vqa: MediaQAConfig = field(default_factory=MediaQAConfig)  # questions about images
    aqa: MediaQAConfig = field(default_factory=MediaQAConfig)  # questions about audio clips
    seed: int = 0
