import XMPPCore

extension ServerContext {
    /// The SASL failure for a password login (SCRAM, PLAIN) that policy forbids, if it does.
    ///
    /// Asked only after the password was found right, so the answer (which says that a
    /// certificate is required) is never shown to someone who does not know the password: for
    /// them the outcome is the same `not-authorized` as for a wrong password or an unknown user.
    func passwordLoginRefusal(_ username: String) -> SASLError? {
        for policy in modules.passwordLoginPolicies {
            if case .certificateRequired(let text) = policy(username, self) {
                return SASLError(.notAuthorized, text: text)
            }
        }
        return nil
    }
}
