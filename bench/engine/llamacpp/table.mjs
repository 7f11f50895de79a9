// SPDX-License-Identifier: MIT
// Markdown table of bench/engine/run.sh's results: medians per model, type, thread count and
// engine of the JSON lines written by run.sh (bench_engine --gguf and bench.mjs, one timed run
// per line), with the memory bandwidth measured by bench_engine --bandwidth.
//
//   node table.mjs RESULTS.jsonl BW_JSON DATE LOAD_START LOAD_END PROMPT GEN RUNS
import fs from "node:fs";
import os from "node:os";

const [resultsPath, bwJson, date, loadStart, loadEnd, prompt, gen, runs] = process.argv.slice(2);
const bwAll = JSON.parse(bwJson);
const bw = bwAll.bw_gbs; // GB/s with 1 and 2 threads
const rows = fs.readFileSync(resultsPath, "utf8").trim().split("\n").map((l) => JSON.parse(l));

function median(v) {
    const s = [...v].sort((a, b) => a - b);
    const n = s.length;
    if (n === 0) return NaN;
    return n % 2 ? s[(n - 1) / 2] : 0.5 * (s[n / 2 - 1] + s[n / 2]);
}

const groups = new Map();
for (const r of rows) {
    const key = `${r.model}|${r.type}|${r.threads}`;
    if (!groups.has(key)) groups.set(key, {model: r.model, type: r.type, threads: r.threads, brigade: [], llama: []});
    groups.get(key)[r.result.engine === "brigade" ? "brigade" : "llama"].push(r.result);
}

const f1 = (x) => (Number.isFinite(x) ? x.toFixed(1) : "-");
const f2 = (x) => (Number.isFinite(x) ? x.toFixed(2) : "-");
const pct = (x) => (Number.isFinite(x) ? (100 * x).toFixed(1) + "%" : "-");
const cpu = os.cpus()[0]?.model ?? "?";
const llamaInfo = rows.find((r) => r.result.engine === "llama.cpp")?.result;

const out = [];
out.push(`${date}, ${cpu}, ${os.cpus().length} vCPUs, load average ${loadStart} at the start and ${loadEnd} at the end.`);
const seen = bwAll.start ? ` (before the runs ${bwAll.start.join(" / ")}, after ${bwAll.end.join(" / ")} GB/s; the higher is used)` : "";
out.push(`Memory read bandwidth: ${bw[0].toFixed(1)} GB/s (1 thread), ${bw[1].toFixed(1)} GB/s (2 threads)${seen}.`);
out.push(`Prompt ${prompt} tokens, generation ${gen} tokens; median of ${runs} runs per engine, the two engines' runs alternating.`);
const brigadeInfo = rows.find((r) => r.result.engine === "brigade")?.result;
if (brigadeInfo?.kernels)
    out.push(`brigade: bench_engine Release build, kernels ${brigadeInfo.kernels}.`);
if (llamaInfo)
    out.push(`llama.cpp: node-llama-cpp ${llamaInfo.node_llama_cpp ?? ""} ${llamaInfo.build} binary, llama.cpp ${llamaInfo.llama_cpp?.release ?? "?"}, flash attention ${llamaInfo.flash_attention}, KV cache ggml types ${JSON.stringify(llamaInfo.kv_cache_type)}, ${llamaInfo.system_info.trim()}`);
out.push("");
out.push("| model | type | threads | brigade pp tok/s | llama.cpp pp tok/s | brigade gen tok/s | llama.cpp gen tok/s | gen ratio (brigade/llama.cpp) | MB/token | brigade % of BW | llama.cpp % of BW |");
out.push("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|");
const checks = [];
for (const g of groups.values()) {
    const bpp = median(g.brigade.map((r) => r.pp_tok_s));
    const lpp = median(g.llama.map((r) => r.pp_tok_s));
    const bgen = median(g.brigade.map((r) => r.gen_tok_s));
    const lgen = median(g.llama.map((r) => r.gen_tok_s));
    const mb = g.brigade[0]?.mb_per_token ?? NaN;
    const gbs = bw[Math.min(g.threads, 2) - 1];
    out.push(`| ${g.model} | ${g.type.toUpperCase()} | ${g.threads} | ${f1(bpp)} | ${f1(lpp)} | ${f1(bgen)} | ${f1(lgen)} | ${f2(bgen / lgen)} | ${mb.toFixed(2)} | ${pct((mb * bgen) / (gbs * 1000))} | ${pct((mb * lgen) / (gbs * 1000))} |`);
    const lppIn = median(g.llama.map((r) => r.pp_internal_tok_s ?? NaN));
    const lgenIn = median(g.llama.map((r) => r.gen_internal_tok_s ?? NaN));
    checks.push(`| ${g.model} | ${g.type.toUpperCase()} | ${g.threads} | ${f1(lppIn)} | ${f1(lgenIn)} | ${f2(bgen / lgenIn)} | ${median(g.brigade.map((r) => r.gen_cpu_per_wall)).toFixed(2)} | ${median(g.llama.map((r) => r.gen_cpu_per_wall)).toFixed(2)} | ${Math.min(...g.llama.map((r) => r.context_threads))} | ${Math.min(...g.llama.map((r) => r.generated))} |`);
}
out.push("");
out.push("Checks: llama.cpp's own timers (time inside llama_decode only, without node-llama-cpp's per-token overhead) and the gen ratio against them;");
out.push("process CPU time / wall time during generation (about 1.0 per busy thread); llama.cpp's context thread count and tokens generated per run:");
out.push("");
out.push("| model | type | threads | llama.cpp pp tok/s (own timer) | llama.cpp gen tok/s (own timer) | gen ratio vs own timer | brigade CPU/wall | llama.cpp CPU/wall | llama.cpp context threads | llama.cpp tokens generated |");
out.push("|---|---|---|---:|---:|---:|---:|---:|---:|---:|");
out.push(...checks);
process.stdout.write(out.join("\n") + "\n");
