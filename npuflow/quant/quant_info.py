"""``quant_info.json``: the quantization parameters of every tensor, as data (docs section 6).

Besides the full per-tensor entries, power-of-two targets get Vitis AI's compact view
(``param``/``output``/``input`` as ``[[bits, fix_pos]]``) so tools written for ``quant_info.json``
of vai_q_pytorch can read ours.
"""

from __future__ import annotations

from .params import TensorQuant

FORMAT_VERSION = 1


def quant_info(params: dict[str, TensorQuant], *, target: str, scale_type: str, cle: bool = False,
               bias_corrected: bool = False, fast_finetuned: bool = False, algorithms: dict | None = None) -> dict:
    info: dict = {"format_version": FORMAT_VERSION, "target": target, "scale_type": scale_type,
                  "tensors": {name: q.to_json() for name, q in params.items()}}
    if scale_type == "power_of_two":
        section = {"weight": "param", "bias": "param", "constant": "param", "input": "input", "activation": "output"}
        for key in ("param", "output", "input"):
            info[key] = {}
        for name, q in params.items():
            if q.fix_pos is None:
                continue
            fp = q.fix_pos.tolist() if q.fix_pos.ndim else int(q.fix_pos)
            info[section[q.kind]][name] = [[q.bits, fp]]
    info.update({"fast_finetuned": fast_finetuned, "bias_corrected": bias_corrected, "cle": cle})
    if algorithms:
        info["algorithms"] = algorithms
    return info
