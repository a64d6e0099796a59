"""The replicas' router: Ray's PrefixCacheAffinityRouter (among the replicas that hold the
model, the one whose routed prompts share the longest prefix with this one, unless the
replicas' loads are too uneven), with two defects of ray[serve]==2.60.0 mended:

- Its prefix tree is a detached actor that outlives the routers: after a redeploy it still
  named the old replicas, and a request sent to "the replica with the fewest characters",
  one of those, raised KeyError in the router and waited forever. Unknown replicas are
  dropped from the tree when the replica set changes, and a choice naming one is set aside.
- It asked for the model's replicas a second time in a request's routing, when Serve
  answers with "the replicas with the fewest models" instead: a conversation was moved off
  its replica once another replica had loaded a second model.

Written against the router's internals (`_tree_actor`, `_replica_id_set`,
`_multiplexed_model_id_to_replica_ids`, `_prefix_match_best_replicas`): re-check them when
Ray is upgraded."""

from __future__ import annotations

import ray
from ray.llm._internal.serve.routing_policies.prefix_aware.prefix_aware_router import (
    PrefixCacheAffinityRouter,
)
from ray.serve._private.request_router import PowerOfTwoChoicesRequestRouter


class ChatdRouter(PrefixCacheAffinityRouter):
    def update_replicas(self, replicas) -> None:
        super().update_replicas(replicas)
        known = {r.to_full_id_str() for r in self._replica_id_set}
        tenants = ray.get(self._tree_actor.getattr.remote("tenant_to_char_count"))
        if stale := [t for t in tenants if t not in known]:
            ray.get(self._tree_actor.remove_tenants.remote(stale))

    async def choose_replicas(self, candidate_replicas, pending_request=None):
        """The replicas holding the model, narrowed by prefix; else power of two choices."""
        fallback = await PowerOfTwoChoicesRequestRouter.choose_replicas(
            self, candidate_replicas, pending_request
        )
        if pending_request is None or not fallback:
            return fallback
        model_id = pending_request.metadata.multiplexed_model_id
        holding = self._multiplexed_model_id_to_replica_ids.get(model_id) if model_id else None
        candidates = [r for r in candidate_replicas if not holding or r.replica_id in holding]
        try:
            chosen = await self._prefix_match_best_replicas(pending_request, candidates)
        except KeyError:  # another ingress's router added a replica this one has not heard of
            return fallback
        return chosen if chosen[0] else fallback
