"""The agent's one error type: a code the host maps to its own errors, and a one-line message."""


class AgentError(Exception):
    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
