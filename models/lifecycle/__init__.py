"""The model lifecycle: training jobs and retraining triggers.

- `store`: the job table, its progress events and the trigger log, in the registry's database (tables in `schema`);
- `config`: a job's training configuration, checked and normalised;
- `running`: how one job runs, in this process or in a worker process;
- `versions`: registered versions compared, activated (by hand or by a job), rolled back;
- `triggers`: whether the champion is stale and a job should run.
"""
