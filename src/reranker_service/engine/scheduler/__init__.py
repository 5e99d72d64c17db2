"""The scheduler: one queue of pairs from every request, admission, the batch policy, worker
threads that hand passes to their model runners, OOM halving, NaN refusal, and one record per
pass. It counts in integers and never touches a tensor."""
