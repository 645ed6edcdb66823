extension Array {
    /// Hands every element to `body`, in order, moved out of the array, which is left empty
    /// with its capacity kept for reuse: no element is copied, so nothing an element holds is
    /// retained and released again. `placeholder` fills each slot while the array still counts
    /// it; it should hold no storage (empty texts, a case without payload). The hot paths that
    /// pass values along — the parser's events, the message journal's entries — use this:
    /// iterating an array, or `reverse()` then `popLast()`, copies each element.
    @inlinable
    public mutating func moveEach(leaving placeholder: Element, _ body: (consuming Element) throws -> Void) rethrows {
        defer { removeAll(keepingCapacity: true) }
        try withUnsafeMutableBufferPointer { buffer in
            guard let base = buffer.baseAddress else { return }
            for index in buffer.indices {
                let element = (base + index).move()
                (base + index).initialize(to: placeholder)
                // `consume`: without it the element is copied on its way (measured, Swift 6.3).
                try body(consume element)
            }
        }
    }
}
