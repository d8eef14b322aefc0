"""llama.cpp's answers on Gemma 3 270M, which tests/gemma3.rs compares the engine with.

Run with llama-cpp-python 0.3.36 and gguf 0.19.0 (../shared/tools/llm-anchor's lock file;
scripts/bench-engine.sh builds that venv), never in CI:

    python make_reference.py GEMMA_GGUF > reference.json

It writes, for the Q4_K_M file: token ids of a set of texts (special tokens parsed), the
greedy continuation of each prompt with every step's top-two margin (and the text of its
steps before the first gap under 0.6), and Gemma's chat
format as llama.cpp renders it; and for the same weights dequantized to F32 (gguf-py's
dequantization, F32 KV cache): the top logits of each prompt's first steps.
"""

import ctypes
import json
import pathlib
import sys
import tempfile

import llama_cpp
import numpy as np
from gguf import GGUFReader, GGUFValueType, GGUFWriter
from gguf.quants import dequantize

TEXTS = [
    "Hello, world!",
    " leading space",
    "a  b   c    d",
    "new\nline\n\n\ndone",
    "tabs\tand\t\ttabs",
    "<start_of_turn>user\nWhat is 2+2?<end_of_turn>\n<start_of_turn>model\n",
    "Ünïcödé façade — naïve café 日本語のテキスト 😀🎉",
    "emoji 🤖 and rare 𝔘𝔫𝔦𝔠𝔬𝔡𝔢",
    "def f(x):\n    return x**2  # square\n",
    "<b>bold</b> and <table><tr><td>1</td></tr></table>",
    "1234567890 3.14159 -42",
    "https://example.com/path?query=1&b=2",
    "\u0000\u0001 control",
    "a\r\nb",
]
# The last prompt (667 tokens) runs past the 512-position window of Gemma 3's window layers.
PROMPTS = [
    "The capital of France is",
    "Once upon a time, there was a",
    "def fibonacci(n):",
    "Water boils at a temperature of",
    "The three primary colors are",
    "1, 2, 3, 4, 5,",
    "The largest planet in our solar system is",
    " ".join(["The history of the Roman Empire spans many centuries, with emperors, senators,"
              " soldiers and citizens shaping its course."] * 30) + " In summary, the Roman Empire",
]
STEPS = 32
# Top-two gaps below this may flip between two quantized implementations (tests/gemma3.rs).
MARGIN = 0.6
F32_STEPS = 3
TOP = 8


def logits(llm: llama_cpp.Llama) -> np.ndarray:
    data = llama_cpp.llama_get_logits(llm.ctx)
    return np.ctypeslib.as_array(data, shape=(llm.n_vocab(),)).copy()


def top(values: np.ndarray) -> list:
    order = np.argsort(-values)[:TOP]
    return [[int(i), float(values[i])] for i in order]


def run(llm: llama_cpp.Llama, ids: list, steps: int) -> list:
    llm.reset()
    llm.eval(ids)
    out = []
    for _ in range(steps):
        values = logits(llm)
        first, second = np.argsort(-values)[:2]
        out.append({"token": int(first), "margin": float(values[first] - values[second]),
                    "top": top(values)})
        llm.eval([int(first)])
    return out


def dequantized(path: str, out: pathlib.Path) -> None:
    reader = GGUFReader(path)
    arch = bytes(reader.fields["general.architecture"].parts[-1]).decode()
    writer = GGUFWriter(str(out), arch)
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        kind = field.types[0]
        if kind == GGUFValueType.ARRAY:
            strings = field.types[1] == GGUFValueType.STRING
            writer.add_array(key, [bytes(field.parts[i]).decode() if strings
                                   else field.parts[i][0].item() for i in field.data])
        elif kind == GGUFValueType.STRING:
            writer.add_string(key, bytes(field.parts[field.data[0]]).decode())
        else:
            writer.add_key_value(key, field.parts[field.data[0]][0].item(), kind)
    for tensor in reader.tensors:
        values = dequantize(tensor.data, tensor.tensor_type).astype(np.float32)
        writer.add_tensor(tensor.name, values.reshape([int(d) for d in reversed(tensor.shape)]))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def chat(llm: llama_cpp.Llama, messages: list) -> str:
    array = (llama_cpp.llama_chat_message * len(messages))()
    keep = []
    for slot, message in zip(array, messages):
        role, content = message["role"].encode(), message["content"].encode()
        keep += [role, content]
        slot.role, slot.content = role, content
    buf = ctypes.create_string_buffer(8192)
    n = llama_cpp.llama_chat_apply_template(b"gemma", array, len(messages), True, buf, len(buf))
    return buf.raw[:n].decode()


def main() -> None:
    path = sys.argv[1]
    llm = llama_cpp.Llama(model_path=path, n_ctx=2048, n_batch=1024, n_threads=2, verbose=False)
    reference = {
        "tokens": [{"text": t, "ids": llm.tokenize(t.encode(), add_bos=False, special=True)}
                   for t in TEXTS],
        "chat": [],
        "prompts": [],
    }
    conversations = [
        [{"role": "user", "content": "Hello"}],
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
         {"role": "assistant", "content": "Hello! How can I help?"},
         {"role": "user", "content": "  Name a color.  "}],
    ]
    for messages in conversations:
        reference["chat"].append({"messages": messages, "text": chat(llm, messages)})
    for prompt in PROMPTS:
        ids = llm.tokenize(prompt.encode(), add_bos=True, special=False)
        steps = run(llm, ids, STEPS)
        # The tokens before the first near tie, and their text: what any implementation
        # within quantization noise of llama.cpp continues the prompt with.
        clear = next((i for i, s in enumerate(steps) if s["margin"] < MARGIN), len(steps))
        text = llm.detokenize([s["token"] for s in steps[:clear]]).decode()
        reference["prompts"].append({"text": prompt, "ids": ids, "clear_steps": clear,
                                     "clear_text": text, "q4_k_m": steps})
    del llm
    with tempfile.TemporaryDirectory() as tmp:
        f32 = pathlib.Path(tmp) / "f32.gguf"
        dequantized(path, f32)
        llm = llama_cpp.Llama(model_path=str(f32), n_ctx=2048, n_batch=1024, n_threads=2,
                              verbose=False, type_k=0, type_v=0)
        for entry in reference["prompts"]:
            entry["f32"] = run(llm, entry["ids"], F32_STEPS)
        del llm
    json.dump(reference, sys.stdout, ensure_ascii=False, indent=1)


if __name__ == "__main__":
    main()
