#!/usr/bin/env python3
"""Reference logits for kiln's CPU backend, made on the GPU machine (PyTorch + transformers).

usage: make_fixtures.py OUT.json NAME=MODEL_DIR [NAME=MODEL_DIR ...]

For every model folder (written by `kiln mkmodel`) and a few fixed prompts it computes:
  (b) an explicit PyTorch simulation of kiln's FP8 math (DESIGN.md, src/backend/cpu/ops.h):
      FP8 activations sat_e4m3(x * (1/input_scale)) with round-to-nearest-even, FP8 weights
      (q|k|v and gate|up requantized to the group's largest weight scale as kiln fuses them),
      f32 accumulation, f32 residual, K/V rounded to the KV cache dtype, lm_head input rounded
      to BF16; and
  (a) transformers' LlamaForCausalLM in float32 on the dequantized weights (no activation
      quantization) -- the architecture reference.
The JSON keeps, per position, the argmax, logsumexp, the top-8 logits and the logits of 64
fixed probe ids under (b) and (a), plus a 32-token greedy continuation under (b). The CI test
(tests/backend/test_reference.c) compares the CPU backend with (b) and reports its distance
to (a). Each model's shard files are identified by sha256 so a changed `kiln mkmodel` is
detected instead of compared against stale numbers.
"""
import datetime
import hashlib
import json
import os
import random
import sys

import torch
import transformers
from safetensors.torch import load_file

torch.set_grad_enabled(False)
torch.use_deterministic_algorithms(True)


def load_dir(d):
    cfg = json.load(open(os.path.join(d, "config.json")))
    qpath = os.path.join(d, "hf_quant_config.json")
    quant = json.load(open(qpath))["quantization"] if os.path.exists(qpath) else None
    idx = os.path.join(d, "model.safetensors.index.json")
    files = sorted(set(json.load(open(idx))["weight_map"].values())) if os.path.exists(idx) \
        else ["model.safetensors"]
    sd = {}
    for f in files:
        sd.update(load_file(os.path.join(d, f)))
    shas = {f: hashlib.sha256(open(os.path.join(d, f), "rb").read()).hexdigest() for f in files}
    return cfg, quant, sd, shas


def f32(x, device=None):
    return torch.tensor(x, dtype=torch.float32, device=device)


def q8(x, scale):
    """sat_e4m3(x * (1/scale)) decoded back to f32 (the FP8 codes' values)."""
    inv = 1.0 / scale
    return (x * inv).clamp(-448.0, 448.0).to(torch.float8_e4m3fn).to(torch.float32)


def fused_linear(sd, prefix, names, fp8):
    """The group's weight (out, in) as f32 codes (FP8) or values, plus its scales."""
    ws = [sd[f"{prefix}.{n}.weight"] for n in names]
    if not fp8:
        return torch.cat([w.float() for w in ws]), None, None
    wsc = [sd[f"{prefix}.{n}.weight_scale"].float().reshape(()) for n in names]
    isc = [sd[f"{prefix}.{n}.input_scale"].float().reshape(()) for n in names]
    smax = max(wsc, key=lambda t: t.item())
    imax = max(isc, key=lambda t: t.item())
    parts = []
    for w, s in zip(ws, wsc):
        c = w.float()
        if s.item() != smax.item():  # requantize: sat_e4m3(code * s_part / s_max)
            c = ((c * s) / smax).clamp(-448.0, 448.0).to(torch.float8_e4m3fn).float()
        parts.append(c)
    return torch.cat(parts), smax, imax


class Sim:
    """kiln's FP8 math in PyTorch (float32 on the CPU)."""

    def __init__(self, cfg, quant, sd, kv_dtype, device="cpu", gemm_noise=0.0):
        self.gemm_noise = gemm_noise  # relative noise added to every linear's output (0: none)
        self.cfg = cfg
        self.fp8 = quant is not None and quant.get("quant_algo") == "FP8"
        self.kv_dtype = kv_dtype
        self.d = cfg["hidden_size"]
        self.H = cfg["num_attention_heads"]
        self.Hkv = cfg.get("num_key_value_heads", self.H)
        self.Dh = cfg.get("head_dim", self.d // self.H)
        self.eps = cfg["rms_norm_eps"]
        self.embed = sd["model.embed_tokens.weight"].float()
        self.norm = sd["model.norm.weight"].float()
        head = sd.get("lm_head.weight", sd["model.embed_tokens.weight"])
        self.head_bf16 = head.dtype == torch.bfloat16
        self.head = head.float()
        self.layers = []
        for i in range(cfg["num_hidden_layers"]):
            p = f"model.layers.{i}"
            L = {"attn_norm": sd[f"{p}.input_layernorm.weight"].float(),
                 "mlp_norm": sd[f"{p}.post_attention_layernorm.weight"].float()}
            L["qkv"] = fused_linear(sd, f"{p}.self_attn", ["q_proj", "k_proj", "v_proj"], self.fp8)
            L["o"] = fused_linear(sd, f"{p}.self_attn", ["o_proj"], self.fp8)
            L["gate_up"] = fused_linear(sd, f"{p}.mlp", ["gate_proj", "up_proj"], self.fp8)
            L["down"] = fused_linear(sd, f"{p}.mlp", ["down_proj"], self.fp8)
            ks = sd.get(f"{p}.self_attn.k_proj.k_scale", sd.get(f"{p}.self_attn.k_scale"))
            vs = sd.get(f"{p}.self_attn.v_proj.v_scale", sd.get(f"{p}.self_attn.v_scale"))
            L["k_scale"] = ks.float().reshape(()) if ks is not None else f32(1.0)
            L["v_scale"] = vs.float().reshape(()) if vs is not None else f32(1.0)
            self.layers.append(L)
        self.inv_freq = self.rope_inv_freq()
        self.device = device
        mv = lambda t: t.to(device) if torch.is_tensor(t) else t
        self.embed, self.norm, self.head = mv(self.embed), mv(self.norm), mv(self.head)
        self.inv_freq = mv(self.inv_freq)
        for L in self.layers:
            for k, v in list(L.items()):
                L[k] = tuple(mv(x) for x in v) if isinstance(v, tuple) else mv(v)

    def rope_inv_freq(self):
        cfg, dim = self.cfg, self.Dh
        base = float(cfg.get("rope_theta", 10000.0))
        inv = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
        rs = cfg.get("rope_scaling") or {}
        kind = rs.get("rope_type", rs.get("type"))
        if kind == "linear":
            inv = inv / rs["factor"]
        elif kind == "llama3":
            factor, lo, hi = rs["factor"], rs["low_freq_factor"], rs["high_freq_factor"]
            old = rs["original_max_position_embeddings"]
            low_wl, high_wl = old / lo, old / hi
            wavelen = 2 * torch.pi / inv
            inv_l = torch.where(wavelen > low_wl, inv / factor, inv)
            smooth = (old / wavelen - lo) / (hi - lo)
            smoothed = (1 - smooth) * inv_l / factor + smooth * inv_l
            medium = ~(wavelen < high_wl) * ~(wavelen > low_wl)
            inv = torch.where(medium, smoothed, inv_l)
        return inv

    def rope(self, x, n):  # x (n, heads, Dh)
        pos = torch.arange(n, dtype=torch.float32, device=x.device)
        ang = pos[:, None] * self.inv_freq[None, :]
        c, s = ang.cos()[:, None, :], ang.sin()[:, None, :]
        half = self.Dh // 2
        a, b = x[..., :half], x[..., half:]
        return torch.cat([a * c - b * s, b * c + a * s], dim=-1)

    def linear(self, x, lin):
        w, ws, isc = lin
        y = x @ w.T if not self.fp8 else (q8(x, isc) @ w.T) * (isc * ws)
        if self.gemm_noise:
            y = y * (1.0 + self.gemm_noise * torch.randn_like(y))
        return y

    def rmsnorm(self, x, w):
        r = 1.0 / torch.sqrt((x * x).mean(-1, keepdim=True) + self.eps)
        return x * r * w

    def kv_round(self, t, scale):
        if self.kv_dtype == "fp8":
            return q8(t, scale) * scale
        if self.kv_dtype == "bf16":
            return t.to(torch.bfloat16).float()
        return t

    def forward(self, ids):
        n = len(ids)
        x = self.embed[torch.tensor(ids, device=self.embed.device)]
        qd, kd = self.H * self.Dh, self.Hkv * self.Dh
        mask = torch.full((n, n), float("-inf"), device=x.device).triu(1)
        scale = f32(1.0, x.device) / torch.sqrt(f32(float(self.Dh), x.device))
        for L in self.layers:
            h = self.rmsnorm(x, L["attn_norm"])
            qkv = self.linear(h, L["qkv"]).to(torch.bfloat16).float()  # kiln stores it as bf16
            q = self.rope(qkv[:, :qd].reshape(n, self.H, self.Dh), n)
            k = self.rope(qkv[:, qd:qd + kd].reshape(n, self.Hkv, self.Dh), n)
            v = qkv[:, qd + kd:].reshape(n, self.Hkv, self.Dh)
            k, v = self.kv_round(k, L["k_scale"]), self.kv_round(v, L["v_scale"])
            g = self.H // self.Hkv
            k = k.repeat_interleave(g, dim=1)
            v = v.repeat_interleave(g, dim=1)
            att = torch.einsum("qhd,khd->hqk", q, k) * scale + mask
            att = torch.softmax(att, dim=-1)
            o = torch.einsum("hqk,khd->qhd", att, v).reshape(n, qd)
            x = x + self.linear(o, L["o"])
            h = self.rmsnorm(x, L["mlp_norm"])
            gu = self.linear(h, L["gate_up"]).to(torch.bfloat16).float()  # stored as bf16
            f = gu.shape[1] // 2
            act = gu[:, :f] / (1.0 + torch.exp(-gu[:, :f])) * gu[:, f:]
            x = x + self.linear(act, L["down"])
        h = self.rmsnorm(x, self.norm)
        if self.head_bf16:
            h = h.to(torch.bfloat16).float()
        return h @ self.head.T


def hf_model(d, cfg, quant, sd):
    config = transformers.AutoConfig.from_pretrained(d)
    config._attn_implementation = "eager"
    model = transformers.LlamaForCausalLM(config).float().eval()
    deq = {}
    for k, v in sd.items():
        if k.endswith((".weight_scale", ".input_scale", ".k_scale", ".v_scale")):
            continue
        if v.dtype == torch.float8_e4m3fn:
            v = v.float() * sd[k[: -len("weight")] + "weight_scale"].float().reshape(())
        deq[k] = v.float()
    missing, unexpected = model.load_state_dict(deq, strict=False)
    missing = [m for m in missing if "rotary" not in m and not
               (m == "lm_head.weight" and config.tie_word_embeddings)]
    assert not missing and not unexpected, (missing, unexpected)
    return model


def prompts():
    r1, r2 = random.Random(1), random.Random(2)
    return [
        [128000, 791, 6864, 315, 9822, 374],  # <|begin_of_text|>The capital of France is
        [r1.randrange(128000) for _ in range(40)],
        [128000] + [r2.randrange(128000) for _ in range(99)],
    ]


def summarize(logits, probe):
    top = torch.topk(logits, 8)
    return {"argmax": int(logits.argmax()), "lse": float(torch.logsumexp(logits, 0)),
            "top_ids": top.indices.tolist(), "top_vals": top.values.tolist(),
            "probe_vals": logits[probe].tolist()}


def main():
    out_path, specs = sys.argv[1], sys.argv[2:]
    probe = random.Random(3).sample(range(128000), 64)
    result = {"made_by": "tools/reference/make_fixtures.py",
              "date": datetime.date.today().isoformat(),
              "torch": torch.__version__, "transformers": transformers.__version__,
              "probe_ids": probe, "models": []}
    for spec in specs:
        name, d = spec.split("=", 1)
        cfg, quant, sd, shas = load_dir(d)
        kv = "fp8" if quant and quant.get("kv_cache_quant_algo") == "FP8" else "bf16"
        sim = Sim(cfg, quant, sd, kv)
        hf = hf_model(d, cfg, quant, sd)
        entry = {"name": name, "sha256": shas, "kv_dtype": kv, "prompts": []}
        for ids in prompts():
            lb = sim.forward(ids)
            la = hf(torch.tensor([ids])).logits[0].float()
            greedy, seq = [], list(ids)
            for _ in range(32):
                t = int(sim.forward(seq)[-1].argmax())
                greedy.append(t)
                seq.append(t)
            entry["prompts"].append({
                "ids": ids,
                "sim": [summarize(lb[i], probe) for i in range(len(ids))],
                "hf_probe_vals": [la[i][probe].tolist() for i in range(len(ids))],
                "hf_argmax": la.argmax(-1).tolist(),
                "hf_vs_sim_max_abs": float((la - lb).abs().max()),
                "hf_vs_sim_rel": float((la - lb).norm() / lb.norm()),
                "greedy": greedy,
            })
            print(f"{name}: prompt of {len(ids)}: |hf-sim| max {entry['prompts'][-1]['hf_vs_sim_max_abs']:.4f}"
                  f" rel {entry['prompts'][-1]['hf_vs_sim_rel']:.2e}, argmax agree "
                  f"{sum(int(a == b['argmax']) for a, b in zip(entry['prompts'][-1]['hf_argmax'], entry['prompts'][-1]['sim']))}/{len(ids)}",
                  flush=True)
        result["models"].append(entry)
    json.dump(result, open(out_path, "w"), separators=(",", ":"))


if __name__ == "__main__":
    main()
