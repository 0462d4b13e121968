/// libvirt's CPU list syntax ("0-3,6,8-9"): parsed to sorted CPU numbers and formatted back.
public enum CPUList {
    public static func parse(_ text: String) -> [Int]? {
        var out = Set<Int>()
        for part in text.split(separator: ",", omittingEmptySubsequences: false) {
            let bounds = part.split(separator: "-", omittingEmptySubsequences: false)
            guard (1...2).contains(bounds.count), let lo = Int(bounds[0]), let hi = Int(bounds.last!), lo >= 0, lo <= hi, hi < 8192 else { return nil }
            out.formUnion(lo...hi)
        }
        return out.isEmpty ? nil : out.sorted()
    }

    public static func format(_ cpus: [Int]) -> String {
        var parts: [String] = []
        var i = 0
        let s = Array(Set(cpus)).sorted()
        while i < s.count {
            var j = i
            while j + 1 < s.count && s[j + 1] == s[j] + 1 { j += 1 }
            parts.append(i == j ? "\(s[i])" : "\(s[i])-\(s[j])")
            i = j + 1
        }
        return parts.joined(separator: ",")
    }
}
