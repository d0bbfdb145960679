"""Local development stack: real Redis, Vault and daprd processes, managed as groups.

Used by ``make run`` (``autoglm dev up``) and by the integration and e2e tests, so both
start the same binaries the same way.
"""
