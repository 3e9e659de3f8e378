"""The fail-fast group channel between the pods' wrappers (docs/fail-fast.md).

The coordinator pod's wrapper hosts a GroupServer and, like every other wrapper, joins
it as a GroupMember; the supervisor drives the member with blocking calls.  GroupServer
and SliceLeader (asyncio) load on first use: most pods only run a member.
"""

from .member import GroupAborted, GroupMember, MemberPhase
from .state import Failure, MemberId, Phase
from .wire import ProtocolError, read_token

__all__ = ["Failure", "GroupAborted", "GroupMember", "GroupServer", "MemberId", "MemberPhase", "Phase",
           "ProtocolError", "SliceLeader", "read_token"]


def __getattr__(name):
    if name == "GroupServer":
        from .server import GroupServer

        return GroupServer
    if name == "SliceLeader":
        from .relay import SliceLeader

        return SliceLeader
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
