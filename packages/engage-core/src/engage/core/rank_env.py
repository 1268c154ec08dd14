"""The variables torch.distributed's launchers (torchrun, Lightning's DDP) set for the ranks they
start, which ENGAGE reads and clears: one name each.

>>> [name for name in TORCH_DISTRIBUTED_ENV if name.startswith("MASTER_")]
['MASTER_ADDR', 'MASTER_PORT']
"""

from __future__ import annotations

#: where the ranks of a job meet, and on which port
MASTER_ADDR_ENV, MASTER_PORT_ENV = "MASTER_ADDR", "MASTER_PORT"
#: a process's rank: among all, on its node, and its node's among the nodes
RANK_ENV, LOCAL_RANK_ENV, NODE_RANK_ENV = "RANK", "LOCAL_RANK", "NODE_RANK"
#: how many ranks there are, in all and on this node; torchrun's rank of this node's group
WORLD_SIZE_ENV, LOCAL_WORLD_SIZE_ENV, GROUP_RANK_ENV = "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK"
#: every one of them: a process inside a distributed job has them, and a job it submits must not
#: inherit them (its ranks find their own)
TORCH_DISTRIBUTED_ENV = (
    MASTER_ADDR_ENV,
    MASTER_PORT_ENV,
    WORLD_SIZE_ENV,
    RANK_ENV,
    LOCAL_RANK_ENV,
    NODE_RANK_ENV,
    LOCAL_WORLD_SIZE_ENV,
    GROUP_RANK_ENV,
)
