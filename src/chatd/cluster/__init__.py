"""chatd on Ray Serve (the optional `chatd[cluster]` extra): the same API, its chat completions
run by replicas spread over a Ray cluster. Each replica is chatd's own Registry and engine
(replica.py); the ingress is chatd's own app with a backend that calls the replicas
(ingress.py); deploy.py builds the Serve application from the Settings. Ray is imported
nowhere else in chatd (tests/unit/test_layers.py), so a plain install never needs it."""
