"""Plain-text tables of Results for the terminal (units converted here, at the edge)."""

from __future__ import annotations

from sim.results import Result


def fmt_bytes(n: float) -> str:
    for unit, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n:.0f} B"


def fmt_time(s: float) -> str:
    if s >= 1:
        return f"{s:.3f} s"
    if s >= 1e-3:
        return f"{s * 1e3:.3f} ms"
    return f"{s * 1e6:.1f} us"


def fmt_energy_split(r: Result) -> str:
    """``76.9 J (static 74.9 J + dynamic 2.0 J)``: energy per generated token and its two parts."""
    return (f"{r.energy_per_token_j:.3f} J (static {r.energy_static_per_token_j:.3f} J + dynamic "
            f"{r.energy_dynamic_per_token_j:.3f} J)")


def table(rows: list[tuple[str, str]]) -> str:
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"  {k:<{width}}  {v}" for k, v in rows)


def request_rows(r: Result) -> list[tuple[str, str]]:
    """Request-level metrics (docs/metrics.md, "Requests"), when requests finished."""
    if not r.requests_completed:
        return []
    slo = r.config.get("slo_ttft_s"), r.config.get("slo_tpot_s")
    rows = [("requests finished", f"{r.requests_completed} ({r.request_output_tokens} output tokens, "
                                  f"{r.request_tokens_per_s:.2f} tokens/s over the wall clock)")]
    for name, label in (("queue", "queueing delay"), ("ttft", "TTFT"), ("tpot", "TPOT"), ("e2e", "end-to-end")):
        rows.append((f"{label} p50/p90/p99", " / ".join(fmt_time(getattr(r, f"{name}_p{q}_s")) for q in (50, 90, 99))))
    if r.prefill_steps:
        rows.append(("prefill", f"{r.prefill_tokens} prompt tokens in {r.prefill_steps} steps, "
                                f"{fmt_time(r.prefill_time_s)} (closed form {fmt_time(r.prefill_analytic_time_s)})"))
    if any(v is not None for v in slo):
        what = " and ".join(f"{k} <= {fmt_time(v)}" for k, v in zip(("TTFT", "TPOT"), slo, strict=True)
                            if v is not None)
        rows.append(("SLO attainment", f"{100 * r.slo_attainment:.1f} % of requests ({what}); goodput "
                                       f"{r.goodput_tokens_per_s:.2f} tokens/s"))
    return rows


def summary(r: Result) -> str:
    head = f"{r.system} | {r.model} | {r.hardware} | batch {r.batch} | context {r.context} | {r.steps} steps"
    rows = [
        ("mean step latency", fmt_time(r.mean_step_latency_s)),
        ("analytic " + ("(exact)" if r.analytic_exact else "(lower bound)"), fmt_time(r.analytic_mean_step_latency_s)),
        ("throughput", f"{r.tokens_per_s:.2f} tokens/s over the wall clock"
                       + (f" ({r.busy_tokens_per_s:.2f} while decoding)"
                          if r.busy_tokens_per_s > r.tokens_per_s * (1 + 1e-9) else "")),
        ("time to next token p50/p99", f"{fmt_time(r.ttnt_p50_s)} / {fmt_time(r.ttnt_p99_s)}"),
        ("step latency min/max", f"{fmt_time(r.step_latency_min_s)} / {fmt_time(r.step_latency_max_s)}"),
        ("GPU-host communication share", f"{100 * r.comm_share:.1f} %"),
        ("KV cache (peak)", f"{fmt_bytes(r.kv_bytes)} in {r.kv_location}"),
        ("fits", "yes" if r.fits else "NO: " + "; ".join(r.fit_reasons)),
        ("energy per token", fmt_energy_split(r)),
        ("mean power", f"{r.mean_power_w:.1f} W (idle power of every device plus its work, over the whole run)"),
    ]
    rows.extend(request_rows(r))
    if "admitted_batch" in r.details:
        rows.append(("admitted batch", f"{r.details['admitted_batch']} of {r.batch} sequences at once (capacity_policy "
                     f"limit: the rest wait until their whole KV fits; budget {r.details['admission_token_budget']} "
                     f"tokens)"))
    elif 0 < r.peak_batch < r.batch:
        rows.append(("largest batch", f"{r.peak_batch} sequences (of {r.batch} allowed)"))
    if "accuracy" in r.details:
        rows.append(("KV format accuracy", f"{r.details['kv_format']}: {r.details['accuracy']}"))
    for k, v in r.breakdown_s.items():
        rows.append((f"time: {k}", fmt_time(v / max(r.steps, 1)) + " per step"))
    for k, v in r.bytes_by_link.items():
        if v > 0:
            rows.append((f"bytes over {k}", fmt_bytes(v / max(r.steps, 1)) + " per step"))
    for k, v in r.busy_s.items():
        if v > 0:
            rows.append((f"busy: {k}", fmt_time(v / max(r.steps, 1)) + " per step"))
    tokens = max(r.tokens, 1)
    for k, v in r.energy_j.items():
        if v > 0:
            rows.append((f"energy: {k}", f"{v / tokens:.3f} J per token (static "
                         f"{r.energy_static_j.get(k, 0.0) / tokens:.3f} J)"))
    out = head + "\n" + table(rows)
    for w in r.warnings:
        out += f"\nwarning: {w}"
    return out
