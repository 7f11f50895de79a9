// SPDX-License-Identifier: MIT
// llama.cpp side of bench/engine: prompt-processing and generation tokens/s of one GGUF file
// through node-llama-cpp's prebuilt CPU binary (npm @node-llama-cpp/linux-x64; nothing is
// downloaded or built: build "never", gpu false).
//
//   node bench.mjs MODEL.gguf [--threads N] [--runs N] [--prompt N] [--gen N]
//
// For each run (after one warm-up run): the sequence is cleared, a prompt of --prompt tokens
// (the same fixed pseudo-prompt bench_engine uses: token 1 + (pos*37) mod (vocab-1)) is
// evaluated as ONE batch (llama_decode of the whole prompt, as llama.cpp processes prompts),
// then --gen tokens are generated greedily one at a time (each decode is one token, the argmax
// of its logits fed back). pp tok/s = prompt / prompt time, gen tok/s = gen / generation time.
// EOS does not stop the loop (bench_engine ignores it too). The context has one sequence,
// --threads threads (getLlama maxThreads and the context's ideal = min = --threads), a batch of
// at least the prompt, and the library's defaults otherwise (F16 KV cache, flash attention
// "auto"); the model is mmap'd, all layers on the CPU.
//
// llama.cpp's own timers (llama_perf_context, read through printTimings) are reported too:
// pp/gen_internal_tok_s count only the time inside llama_decode, without node-llama-cpp's
// per-token overhead (JS async generator, sampling call, N-API hops), which matters for tiny
// models such as stories260K.
//
// Output: one JSON line on stdout with the medians, every run's figures, the thread count the
// context really used, the CPU time / wall time ratio of each phase (about 1.0 for one busy
// thread: a check that no extra threads did work), the llama.cpp release and its system info
// (the CPU backend variant and features chosen at run time).
import fs from "node:fs";
import process from "node:process";

process.env.NODE_LLAMA_CPP_SKIP_DOWNLOAD = "true";

const {getLlama, LlamaLogLevel} = await import("node-llama-cpp");

function parseArgs(argv) {
    const o = {model: null, threads: 1, runs: 3, prompt: 64, gen: 128};
    for (let i = 0; i < argv.length; i++) {
        const a = argv[i];
        const num = () => {
            const v = Number(argv[++i]);
            if (!Number.isInteger(v) || v < 1)
                throw new Error(`${a} needs a positive integer`);
            return v;
        };
        if (a === "--threads") o.threads = num();
        else if (a === "--runs") o.runs = num();
        else if (a === "--prompt") o.prompt = num();
        else if (a === "--gen") o.gen = num();
        else if (!a.startsWith("--") && o.model == null) o.model = a;
        else throw new Error(`unknown argument ${a}`);
    }
    if (o.model == null)
        throw new Error("usage: node bench.mjs MODEL.gguf [--threads N] [--runs N] [--prompt N] [--gen N]");
    return o;
}

function median(v) {
    const s = [...v].sort((a, b) => a - b);
    const n = s.length;
    return n % 2 ? s[(n - 1) / 2] : 0.5 * (s[n / 2 - 1] + s[n / 2]);
}

// llama.cpp's cumulative perf counters, printed through the logger by printTimings().
const logLines = [];
async function perfCounters(context) {
    logLines.length = 0;
    await context.printTimings();
    await new Promise((resolve) => setTimeout(resolve, 20)); // log lines arrive via the event loop
    const text = logLines.join("\n");
    const grab = (label) => {
        const m = new RegExp(`${label}\\s*=\\s*([0-9.]+) ms /\\s*([0-9]+)`).exec(text);
        return m ? {ms: Number(m[1]), n: Number(m[2])} : {ms: NaN, n: NaN};
    };
    return {prompt: grab("prompt eval time"), gen: grab("[^t] eval time")};
}

function cpuSeconds() {
    const u = process.cpuUsage();
    return (u.user + u.system) / 1e6;
}

// One run: clear, prompt as one batch, then n_gen single-token greedy decodes.
async function runOnce(seq, prompt, nGen, vocab) {
    await seq.clearHistory();
    let c0 = cpuSeconds();
    let t0 = process.hrtime.bigint();
    await seq.evaluateWithoutGeneratingNewTokens(prompt);
    let t1 = process.hrtime.bigint();
    let c1 = cpuSeconds();
    const ppS = Number(t1 - t0) / 1e9;
    const ppCpu = (c1 - c0) / ppS;

    // The first generation step decodes a token chosen like bench_engine's pseudo-prompt; every
    // later step decodes the previous step's argmax (temperature 0). nGen decodes in all.
    const first = 1 + ((prompt.length * 37) % (vocab - 1));
    let n = 0;
    c0 = cpuSeconds();
    t0 = process.hrtime.bigint();
    for await (const token of seq.evaluate([first], {temperature: 0})) {
        void token;
        if (++n >= nGen) break;
    }
    t1 = process.hrtime.bigint();
    c1 = cpuSeconds();
    const genS = Number(t1 - t0) / 1e9;
    return {pp: prompt.length / ppS, gen: n / genS, ppCpu, genCpu: (c1 - c0) / genS, nGen: n};
}

async function main() {
    const o = parseArgs(process.argv.slice(2));
    const llama = await getLlama({
        gpu: false,
        build: "never",
        usePrebuiltBinaries: true,
        skipDownload: true,
        progressLogs: false,
        maxThreads: o.threads,
        logLevel: LlamaLogLevel.info,
        logger: (level, message) => {
            logLines.push(message);
            if (level === LlamaLogLevel.error || level === LlamaLogLevel.fatal)
                process.stderr.write(message);
        }
    });
    const model = await llama.loadModel({modelPath: o.model, gpuLayers: 0, useMmap: true});
    const embd = (model.fileInfo.tensorInfo ?? []).find((t) => t.name === "token_embd.weight");
    if (embd == null)
        throw new Error("no token_embd.weight in the file");
    const vocabSize = Number(embd.dimensions[1]);
    const contextSize = Math.max(256, o.prompt + o.gen + 8);
    const context = await model.createContext({
        contextSize,
        batchSize: Math.max(o.prompt, 64),
        sequences: 1,
        threads: {ideal: o.threads, min: o.threads},
        performanceTracking: true // flash attention and KV cache types: the library's defaults
    });
    const seq = context.getSequence();
    const prompt = [];
    for (let pos = 0; pos < o.prompt; pos++)
        prompt.push(1 + ((pos * 37) % (vocabSize - 1)));

    await runOnce(seq, prompt.slice(0, Math.min(8, o.prompt)), 4, vocabSize); // warm-up
    // node-llama-cpp's printTimings resets llama.cpp's counters after printing them, so after this
    // call (which drops the warm-up's figures) each run's counters cover exactly that run; a run
    // whose token counts do not match is not used.
    await perfCounters(context);
    const runs = [];
    for (let r = 0; r < o.runs; r++) {
        const run = await runOnce(seq, prompt, o.gen, vocabSize);
        const c = await perfCounters(context);
        run.ppInternal = c.prompt.n === prompt.length ? c.prompt.n / (c.prompt.ms / 1e3) : NaN;
        run.genInternal = c.gen.n === run.nGen ? c.gen.n / (c.gen.ms / 1e3) : NaN;
        runs.push(run);
    }

    const out = {
        engine: "llama.cpp",
        model: o.model,
        threads: o.threads,
        context_threads: context.currentThreads,
        ideal_threads: context.idealThreads,
        prompt: o.prompt,
        gen: o.gen,
        runs: o.runs,
        pp_tok_s: median(runs.map((r) => r.pp)),
        gen_tok_s: median(runs.map((r) => r.gen)),
        pp_internal_tok_s: median(runs.map((r) => r.ppInternal)),
        gen_internal_tok_s: median(runs.map((r) => r.genInternal)),
        pp_runs: runs.map((r) => +r.pp.toFixed(2)),
        gen_runs: runs.map((r) => +r.gen.toFixed(2)),
        pp_cpu_per_wall: +median(runs.map((r) => r.ppCpu)).toFixed(2),
        gen_cpu_per_wall: +median(runs.map((r) => r.genCpu)).toFixed(2),
        generated: Math.min(...runs.map((r) => r.nGen)),
        node_llama_cpp: JSON.parse(fs.readFileSync(new URL("./node_modules/node-llama-cpp/package.json", import.meta.url), "utf8")).version,
        flash_attention: context.flashAttention,
        kv_cache_type: [model.defaultContextKvCacheKeyType, model.defaultContextKvCacheValueType],
        build: llama.buildType,
        gpu: llama.gpu,
        llama_cpp: llama.llamaCppRelease,
        system_info: llama.systemInfo
    };
    process.stdout.write(JSON.stringify(out) + "\n");
    await context.dispose();
    await model.dispose();
    await llama.dispose();
}

main().catch((e) => {
    process.stderr.write(`bench.mjs: ${e?.stack ?? e}\n`);
    process.exit(1);
});
