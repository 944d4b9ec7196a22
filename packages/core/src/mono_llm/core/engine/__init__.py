"""The engine's step loop and request bookkeeping.

`core.EngineCore` runs one step at a time: the scheduler picks this step's slices, the worker
runs them, and the output processor turns sampled tokens into `RequestOutput`s (detokenizing
and checking stops on the way). `offline_loop` drives it for `LLM`; `AsyncLLM` drives it from
a background thread.
"""
