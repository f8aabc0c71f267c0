"""Chinese for the English messages the console's forms can meet (the API's validators speak
English; the contract's Chinese covers only its codes). Field names are translated too; a message
not listed keeps its English detail inside a Chinese frame."""
from __future__ import annotations

import re

FIELDS = {
    "amount": "金额", "note": "备注", "rpm": "每分钟请求数", "max_concurrent": "并发调用数",
    "expires_at": "过期时间", "models": "模型", "name": "名称", "aliases": "别名", "fallbacks": "备用模型",
    "cost_per_1k_tokens": "基础价格", "cost_per_1k_input_tokens": "输入价格",
    "cost_per_1k_cached_input_tokens": "缓存输入价格", "cost_per_1k_cache_write_5m_tokens": "5 分钟缓存写入价格",
    "cost_per_1k_cache_write_1h_tokens": "1 小时缓存写入价格", "cost_per_1k_output_tokens": "输出价格",
    "cost_per_1k_reasoning_tokens": "推理价格", "max_output_tokens": "最大输出词元数",
    "from": "起始时间", "to": "截止时间", "status": "状态码", "key_id": "密钥", "limit": "每页条数",
    "before": "翻页位置", "budget": "预算", "budget_period": "预算周期",
}

# (English, as the validators word it) -> Chinese; {f} is the field, {row} the catalogue row
PATTERNS = [(re.compile(en), zh) for en, zh in (
    (r"^'(?P<f>\w+)' must be a number$", "{f}必须是数字"),
    (r"^'(?P<f>\w+)' must be a plain decimal number such as 12\.5$", "{f}必须是普通小数，例如 12.5"),
    (r"^'(?P<f>\w+)' must be a finite number with at most 6 decimals$", "{f}必须是有限数字，最多 6 位小数"),
    (r"^'(?P<f>\w+)' must be at most (?P<n>\d+) credits$", "{f}最多为 {n} 积分"),
    (r"^'(?P<f>\w+)' must not be zero$", "{f}不能为 0"),
    (r"^'(?P<f>\w+)' must be a positive integer$", "{f}必须是正整数"),
    (r"^'(?P<f>\w+)' must be at most 255 characters without control characters$",
     "{f}最多 255 个字符，且不能含控制字符"),
    (r"^A correction cannot take the balance below what is held or zero, nor a top-up above the largest balance$",
     "更正不能使余额低于冻结金额或 0，充值也不能使余额超过上限"),
    (r"^(?P<row>.+?): (?P<f>\w+) must not be negative$", "{row}：{f}不能为负数"),
    (r"^(?P<row>.+?): (?P<f>\w+) must be a number of credits with at most 6 decimals$",
     "{row}：{f}必须是积分数值，最多 6 位小数"),
    (r"^(?P<row>.+?): (?P<f>\w+) must be at most (?P<n>\d+) credits$", "{row}：{f}最多为 {n} 积分"),
    (r"^(?P<row>.+?): (?P<f>\w+) must be an integer from (?P<lo>\d+) to (?P<hi>\d+)$",
     "{row}：{f}必须是 {lo} 到 {hi} 之间的整数"),
    (r"^(?P<row>.+?): (?P<f>\w+) must be a list of names$", "{row}：{f}必须是名称列表"),
    # the Logs page's filters, the overview's range, a key's page (issue 35)
    (r"^'(?P<f>\w+)' must be a unix time or an ISO 8601 date or time between 1970-01-01 and 9999-12-31 \(UTC\)$",
     "{f}必须是 1970-01-01 到 9999-12-31 之间的日期或时间（UTC）"),
    (r"^'from' must be before 'to'$", "起始时间必须早于截止时间"),
    (r"^'(?P<f>\w+)' must be an integer between (?P<lo>\d+) and (?P<hi>\d+)$", "{f}必须是 {lo} 到 {hi} 之间的整数"),
    (r"^'expires_at' must be a unix time or an ISO 8601 time$", "过期时间必须是日期和时间（UTC）"),
    (r"^'(?P<f>\w+)' must not be negative$", "{f}不能为负数"),
    (r"^'budget_period' must be day, week, month or total$", "预算周期必须是每日、每周、每月或总计"),
    # a catalogue row's deployments (service/pipeline/deployments.py), named deployments[i].field
    (r"^(?P<row>.+?): (?P<f>deployments\[\d+\]\.\w+) must be an integer from (?P<lo>\d+) to (?P<hi>\d+)$",
     "{row}：{f}必须是 {lo} 到 {hi} 之间的整数"),
    (r"^(?P<row>.+?): (?P<f>deployments\[\d+\]\.\w+) is not a deployment field$", "{row}：{f}不是部署字段"),
    (r"^(?P<row>.+?): (?P<f>deployments\[\d+\]\.name) is required: .+$",
     "{row}：{f}为必填项：1 到 64 个字母、数字、'.'、'_' 或 '-'"),
    (r"^(?P<row>.+?): (?P<f>deployments\[\d+\]\.name) (?P<name>.+) is used twice in this model$",
     "{row}：{f} {name} 在此模型中重复"),
    (r"^(?P<row>.+?): (?P<f>deployments\[\d+\]\.\w+) must be a non-empty string$", "{row}：{f}必须是非空字符串"),
    (r"^(?P<row>.+?): (?P<f>deployments\[\d+\]\.\w+) must be true or false$", "{row}：{f}必须是 true 或 false"),
    (r"^(?P<row>.+?): (?P<f>deployments) must be a list of tables .+$",
     "{row}：{f}必须是表的列表（同 [[models.deployments]]）"),
    (r"^(?P<row>.+?): (?P<f>deployments\[\d+\]) must be a table of fields$", "{row}：{f}必须是字段表"),
    (r"^(?P<row>.+?): (?P<f>[\w.\[\]]+) must be one of (?P<names>.+) \(got (?P<got>.+)\)$",
     "{row}：{f}必须是以下之一：{names}（收到 {got}）"),
    (r"^(?P<row>.+?): (?P<f>[\w.\[\]]+) must be one of (?P<names>.+)$", "{row}：{f}必须是以下之一：{names}"),
    # readiness (service/web/health.py)
    (r"^(?P<n>\d+) enabled models$", "已启用 {n} 个模型"),
    (r"^database: (?P<e>\w+)$", "数据库：{e}"),
    (r"^redis: unreachable, using in-process limits and caches$", "Redis 无法连接，限流与缓存改在进程内进行"),
    (r"^catalogue: (?P<e>\w+)$", "模型目录：{e}"),
    (r"^upstreams paused by their circuit breaker: (?P<names>.+)$", "以下上游已被熔断器暂停：{names}"),
    (r"^journal: (?P<n>\d+) settles wait for the database$", "{n} 笔结算等待写入数据库"),
)]


def message(english: str) -> str | None:
    """The Chinese for a validator's English message, or None when it is not listed."""
    for pattern, zh in PATTERNS:
        found = pattern.match(english)
        if found:
            parts = found.groupdict()
            if "f" in parts:
                parts["f"] = FIELDS.get(parts["f"], parts["f"])
            return zh.format(**parts)
    return None
