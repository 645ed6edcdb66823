import Testing
@testable import XMPPCore
