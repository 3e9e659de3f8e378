"""The fail-fast group channel between the pods' wrappers (docs/fail-fast.md).

The coordinator pod's wrapper hosts a GroupServer and, like every other wrapper, joins
it as a GroupMember; the supervisor drives the member with blocking calls.
"""

from .member import GroupAborted, GroupMember, MemberPhase
from .server import GroupServer
from .state import Failure, MemberId, Phase
from .wire import ProtocolError, read_token

__all__ = ["Failure", "GroupAborted", "GroupMember", "GroupServer", "MemberId", "MemberPhase", "Phase",
           "ProtocolError", "read_token"]
