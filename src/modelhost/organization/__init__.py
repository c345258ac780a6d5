"""The Administration and Usage APIs as plain functions, shared by the HTTP routes and the CLI.

Every function takes the session factory and a `Scope` (the organization acted on, and who
acts), runs one transaction through `modelhost.store`, records the audit event in that same
transaction, and returns OpenAI's wire objects (`modelhost.protocol.admin`). Failures are typed
`modelhost.errors` (an id of another organization is a `NotFound`, exactly like a missing one).

Modules, one per resource: `admin_keys`, `users`, `invites`, `projects`, `project_users`,
`service_accounts`, `project_keys`, `model_permissions`, `usage`, `audit`; `api_keys` mints and
revokes every key; `bootstrap` makes the first organization and looks users and organizations up
by name; `operator` is what the CLI does that the API has no route for.
"""

from modelhost.organization.common import Scope

__all__ = ["Scope"]
