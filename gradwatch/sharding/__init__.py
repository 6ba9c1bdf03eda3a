"""DTensor-sharded models: the gathered replica, the gradient after the collectives, the check in
place on the shards.
"""
