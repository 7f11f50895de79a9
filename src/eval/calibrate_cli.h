/* SPDX-License-Identifier: MIT */
/*
 * `brigade calibrate`: chooses a route's threshold on labelled outcomes for a cost/quality
 * objective, with bootstrap intervals, and optionally writes it into the config file.
 */
#ifndef BR_EVAL_CALIBRATE_CLI_H
#define BR_EVAL_CALIBRATE_CLI_H

/**
 * Runs the command with its arguments (after "calibrate"). Returns the exit status: 0 done,
 * 2 usage error, 3 the objective cannot be met (the closest threshold is reported), 1 other
 * failures.
 */
int br_calibrate_cli(int argc, char **argv);

#endif
