import XMLStream

/// XEP-0004 data forms: building forms and results, reading submissions.
public struct DataForm: Sendable, Hashable {
    public struct Field: Sendable, Hashable {
        public var name: String
        public var type: String?
        public var label: String?
        public var values: [String]

        public init(_ name: String, type: String? = nil, label: String? = nil, values: [String] = []) {
            self.name = name
            self.type = type
            self.label = label
            self.values = values
        }

        public init(_ name: String, type: String? = nil, label: String? = nil, value: String) {
            self.init(name, type: type, label: label, values: [value])
        }

        var element: XMLElement {
            var field = XMLElement("field", xmlns: NS.dataForms, ["var": name])
            if let type { field[attribute: "type"] = type }
            if let label { field[attribute: "label"] = label }
            for value in values { field.append(XMLElement("value", xmlns: NS.dataForms).withText(value)) }
            return field
        }
    }

    /// form, submit, result or cancel.
    public var type: String
    /// The hidden FORM_TYPE field's value.
    public var formType: String?
    public var title: String?
    public var instructions: String?
    public var fields: [Field]
    /// Column headers of a multi-item result.
    public var reported: [Field]
    public var items: [[Field]]

    public init(
        type: String, formType: String? = nil, title: String? = nil, instructions: String? = nil, fields: [Field] = [],
        reported: [Field] = [], items: [[Field]] = []
    ) {
        self.type = type
        self.formType = formType
        self.title = title
        self.instructions = instructions
        self.fields = fields
        self.reported = reported
        self.items = items
    }

    public var element: XMLElement {
        var form = XMLElement("x", xmlns: NS.dataForms, ["type": type])
        if let title { form.append(XMLElement("title", xmlns: NS.dataForms).withText(title)) }
        if let instructions { form.append(XMLElement("instructions", xmlns: NS.dataForms).withText(instructions)) }
        if let formType { form.append(Field("FORM_TYPE", type: "hidden", value: formType).element) }
        for field in fields { form.append(field.element) }
        if !reported.isEmpty {
            form.append(XMLElement("reported", xmlns: NS.dataForms, children: reported.map(\.element)))
        }
        for item in items {
            form.append(XMLElement("item", xmlns: NS.dataForms, children: item.map(\.element)))
        }
        return form
    }

    /// Reads a form element (`<x xmlns='jabber:x:data'>`); nil if it is not one.
    public init?(_ element: XMLElement) {
        guard element.name == "x", element.namespace == NS.dataForms else { return nil }
        type = element[attribute: "type"] ?? "form"
        title = element.child("title", namespace: NS.dataForms)?.text
        instructions = element.child("instructions", namespace: NS.dataForms)?.text
        reported = []
        items = []
        fields = []
        formType = nil
        for child in element.elements where child.name == "field" {
            guard let name = child[attribute: "var"] else { continue }
            let values = child.elements.filter { $0.name == "value" }.map(\.text)
            if name == "FORM_TYPE" {
                formType = values.first
                continue
            }
            fields.append(Field(name, type: child[attribute: "type"], label: child[attribute: "label"], values: values))
        }
    }

    /// The first value of a field, if present.
    public func value(_ name: String) -> String? {
        fields.first { $0.name == name }?.values.first
    }
}
