"""Access administration in the starter library: role grants and API tokens (used by the API's
``/grants`` and ``/tokens`` and by ``taskomatic grant|token``). Blocking calls; a refusal
(no such grant or token: ``id``; an unknown cluster: ``scope``) raises ``RequestError``
naming the field.

    admin = AccessAdmin(db)
    admin.grant(GrantSpec(subject="alice", role="operator", scope="vm:web*"), granted_by="root")
    new = admin.create_token(TokenSpec(subject="ci"), created_by="root"); print(new.token)
"""

from __future__ import annotations

from dataclasses import dataclass

from starter.errors import refusals
from taskomatic.inventory import access
from taskomatic.inventory.db import Database
from taskomatic.models import Grant, GrantSpec, NewToken, TokenRecord, TokenSpec


@dataclass
class AccessAdmin:
    db: Database

    def grants(self, subject: str | None = None) -> list[Grant]:
        return access.list_grants(self.db, subject)

    def grant(self, spec: GrantSpec, granted_by: str) -> tuple[Grant, bool]:
        """Grant (idempotent); returns the grant and whether it is new. RequestError on
        ``scope`` for a ``cluster:NAME`` the inventory does not have."""
        with refusals():
            return access.add_grant(self.db, spec, granted_by)

    def revoke_grant(self, grant_id: int) -> Grant:
        with refusals():
            return access.remove_grant(self.db, grant_id)

    def tokens(self, subject: str | None = None) -> list[TokenRecord]:
        return access.list_tokens(self.db, subject)

    def create_token(self, spec: TokenSpec, created_by: str, token: str | None = None
                     ) -> NewToken:
        """A new API token (``token``: one made beforehand by ``new_token_text``)."""
        return access.create_token(self.db, spec, created_by, token)

    def revoke_token(self, token_id: str) -> TokenRecord:
        with refusals():
            return access.revoke_token(self.db, token_id)
