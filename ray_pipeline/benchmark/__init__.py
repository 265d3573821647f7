"""The benchmark stage: inference latency, throughput, size (and optional test metrics) of the
best trial of every HPO variant that needs one, measured by a pool of Ray actors."""
