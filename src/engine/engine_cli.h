/* SPDX-License-Identifier: MIT */
/*
 * `brigade generate` (text generation with the embedded engine, streamed to stdout, optionally
 * with LoRA adapters applied at run time), `brigade quantize` (rewrite a GGUF or llama2.c model
 * as a self-contained GGUF in another tensor type), `brigade lora merge` (write a model with
 * LoRA adapters merged into its weights) and `brigade quality` (the quality cost of model
 * variants against a reference on a text: top-1 agreement, KL divergence, perplexity). The
 * option lists are in the --help texts of engine_cli.c.
 */
#ifndef BR_ENGINE_ENGINE_CLI_H
#define BR_ENGINE_ENGINE_CLI_H

/**
 * Runs `brigade generate` with its arguments (after "generate"). Returns the exit status:
 * 0 done, 2 usage error, 1 other failures (model cannot be loaded, generation failed).
 */
int br_generate_cli(int argc, char **argv);

/**
 * Runs `brigade quantize` with its arguments (after "quantize"). Returns 0 done, 2 usage
 * error, 1 other failures (unreadable input, cannot write the output).
 */
int br_quantize_cli(int argc, char **argv);

/**
 * Runs `brigade lora` with its arguments (after "lora"; argv[0] is the subcommand, "merge").
 * Returns 0 done, 2 usage error, 1 other failures (unreadable model or adapter, an adapter that
 * does not fit the model, cannot write the output).
 */
int br_lora_cli(int argc, char **argv);

/**
 * Runs `brigade quality` with its arguments (after "quality"). Returns 0 done, 2 usage error,
 * 1 other failures (a model or the text cannot be read, models of another shape or vocabulary,
 * nothing to score).
 */
int br_quality_cli(int argc, char **argv);

#endif
