/* SPDX-License-Identifier: MIT */
/*
 * `brigade eval`: evaluates routers offline on a dataset of recorded outcomes and prints the
 * threshold table, APGR, CPT(50/80/95%), the cost at 95% of the strong model's quality, the
 * two kinds of mistake and the baselines; optionally writes a per-prompt CSV, an SVG plot of
 * the cost-quality curve and a JSON summary. `brigade eval --help` documents every option and
 * the generic JSONL format.
 */
#ifndef BR_EVAL_EVAL_CLI_H
#define BR_EVAL_EVAL_CLI_H

/**
 * Runs the command. argv[0..argc) are the arguments after "eval" (argv may be NULL when argc
 * is 0). Writes the report to stdout, errors and progress to stderr. Returns the process exit
 * code: 0 success, 1 failure (unreadable or malformed data, I/O), 2 bad usage.
 */
int br_eval_cli(int argc, char **argv);

#endif
