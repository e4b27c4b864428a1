"""Running a suite: plan the tasks, feed them to isolated worker processes, start ranks.

sweep.plan / sweep.run_tasks  (suite → tasks → rows appended to a run directory)
pool.WorkerPool               (one worker at a time, replaced after a crash or a timeout)
worker.execute                (one task in a worker: check, measure, classify failures)
ranks.run_ranks               (P rank processes for a distributed task)
"""
