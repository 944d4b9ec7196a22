"""Running one model on several devices: the tensor-parallel group, the executors that drive
one worker per device, and the worker loop itself.

- `group`: `TensorParallelGroup`, the collectives the parallel layers call (one per engine,
  never a process-wide default group, so several engines may share a process);
- `executor`: what `EngineCore` runs steps through: the model runner itself for one device,
  `MultiprocExecutor` for several (rank 0 in the engine process, the others in worker
  processes or Ray actors that receive each step's `ModelBatch`);
- `worker`: the loop of a rank other than 0; `ray_launcher`: ranks as Ray actors;
- `checks`: start-up checks of the sizes against the model and the visible devices.
"""
