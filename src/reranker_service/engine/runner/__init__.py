"""Model runners: what runs a forward pass. ``protocol`` is the boundary the scheduler sees;
each other module is one implementation, and only they touch tensors, masks and key/value
state."""
