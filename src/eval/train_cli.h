/* SPDX-License-Identifier: MIT */
/*
 * `brigade train`: trains the learned router (binary, N-model or cascade verifier) on one or
 * more datasets of recorded outcomes with liblinear, optionally cross-validates it (nested:
 * C is chosen inside each training fold) or evaluates it leave-one-dataset-out, and writes a
 * BRRT model file (route/classifier.h). `brigade train --help` documents every option.
 */
#ifndef BR_EVAL_TRAIN_CLI_H
#define BR_EVAL_TRAIN_CLI_H

/**
 * Runs the command; argv[0..argc) are the arguments after "train". Reports go to stdout,
 * progress and errors to stderr. Returns the exit status: 0 done, 1 failure, 2 bad usage.
 */
int br_train_cli(int argc, char **argv);

#endif
